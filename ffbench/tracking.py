"""MLflow bookkeeping: where runs go, what each run records, and the parent run of a sweep.

By default every run lands in a SQLite store under the launch directory's outputs/, with
artifacts beside it; MLFLOW_TRACKING_URI and MLFLOW_EXPERIMENT_NAME override both.
"""

import atexit
import functools
import logging
import os
import subprocess
import time
import traceback
from contextlib import contextmanager
from pathlib import Path

import mlflow
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from mlflow.entities import Metric, RunStatus
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from ffbench import compare, preflight

# Creating the SQLite store announces its table migrations at INFO level: noise for a user.
logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)

# The config groups a researcher compares runs by; each becomes a param and a tag.
GROUPS = ("algo", "dataset", "model", "goodness", "activation", "optimizer")
# A multirun's parent run id, handed to its jobs (also to jobs in other processes).
PARENT_ENV = "FFBENCH_PARENT_RUN_ID"


def tracking_uri(cfg, launch_dir: str) -> str:
    """cfg.uri, else $MLFLOW_TRACKING_URI, else SQLite in <launch dir>/outputs/mlflow.db."""
    uri = cfg.uri or os.environ.get("MLFLOW_TRACKING_URI")
    return uri or f"sqlite:///{Path(launch_dir, 'outputs', 'mlflow.db').resolve()}"


def experiment_id(client: MlflowClient, cfg, launch_dir: str) -> str:
    """Id of the configured experiment, created on first use."""
    name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or cfg.experiment
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    artifacts = None
    if client.tracking_uri.startswith("sqlite:"):
        # Keep artifacts beside the local store rather than in ./mlruns of whatever directory.
        artifacts = Path(launch_dir, "outputs", "mlartifacts").resolve().as_uri()
    try:
        # MLflow 3's UI opens an experiment of unknown kind on its GenAI pages: ours is training.
        kind = {"mlflow.experimentKind": "custom_model_development"}
        return client.create_experiment(name, artifact_location=artifacts, tags=kind)
    except mlflow.exceptions.MlflowException:  # created meanwhile by a parallel job
        return client.get_experiment_by_name(name).experiment_id


def _client(cfg, launch_dir: str) -> MlflowClient:
    uri = tracking_uri(cfg, launch_dir)
    # a server that is down fails in seconds; a new SQLite store is set up by one process
    preflight.ready_store(uri)
    mlflow.set_tracking_uri(uri)
    return MlflowClient(uri)


def flatten(tree: dict, prefix: str = "") -> dict:
    """{'a': {'b': 1}} -> {'a.b': 1}: MLflow params are flat."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat |= flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def run_name(choices: dict) -> str:
    """Readable name such as ff-sumsq-relu-mnist (goodness is meaningless for bp)."""
    parts = [choices["algo"]]
    if choices["algo"] == "ff":
        parts.append(choices["goodness"])
    return "-".join([*parts, choices["activation"], choices["dataset"]])


@functools.cache
def git_commit(folder: Path = Path(__file__).parent) -> str:
    """Commit of the git checkout holding the ffbench code in `folder`, with "-dirty" if tracked
    files differ from it; "unknown" outside a checkout (an installed wheel) or without git."""

    def git(*args: str) -> str:
        # --no-optional-locks: status must not take the index lock from a parallel job or user
        command = ["git", "--no-optional-locks", "-C", str(folder), *args]
        return subprocess.run(command, capture_output=True, text=True, check=True, timeout=5).stdout

    try:
        # Tracked here, so a checkout of ffbench itself, not a venv inside some other checkout.
        git("ls-files", "--error-unmatch", "__init__.py")
        commit = git("rev-parse", "HEAD").strip()
        dirty = git("status", "--porcelain", "--untracked-files=no").strip()
    except (OSError, subprocess.SubprocessError):  # no git, not a checkout, or too slow
        return "unknown"
    return commit + ("-dirty" if dirty else "")


def finished_run(cfg, settings_hash: str):
    """The newest run of the experiment that trained these settings (ffbench/settings.py) and
    ended FINISHED, or None. FAILED and KILLED runs never count, nor skipped ones (they point to
    the run holding the result), nor deleted ones."""
    hydra = HydraConfig.get()
    client = _client(cfg.tracking, hydra.runtime.cwd)
    runs = client.search_runs(
        [experiment_id(client, cfg.tracking, hydra.runtime.cwd)],
        filter_string=f"tags.`ffbench.settings_hash` = '{settings_hash}'"
        " and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
    )
    return next((run for run in runs if "ffbench.skipped" not in run.data.tags), None)


@contextmanager
def job_run(cfg, tags: dict | None = None):
    """One MLflow run for the current Hydra job, ended FINISHED, FAILED or KILLED, never left
    RUNNING; `tags` are added to the standard ones."""
    hydra = HydraConfig.get()
    client = _client(cfg.tracking, hydra.runtime.cwd)
    choices = {group: hydra.runtime.choices[group] for group in GROUPS}
    tags = {
        **choices,
        "ffbench.output_dir": hydra.runtime.output_dir,
        "ffbench.overrides": " ".join(hydra.overrides.task),
        "ffbench.git_commit": git_commit(),
        **(tags or {}),
    }
    parent = None
    if hydra.mode == RunMode.MULTIRUN:
        parent = os.environ.get(PARENT_ENV)
        tags["ffbench.job_num"] = str(hydra.job.num)
    run = mlflow.start_run(
        experiment_id=experiment_id(client, cfg.tracking, hydra.runtime.cwd),
        run_name=run_name(choices),
        parent_run_id=parent,
        tags=tags,
    )
    try:
        mlflow.log_params(flatten(OmegaConf.to_container(cfg, resolve=True)) | choices)
        yield run
    except BaseException as err:
        _epochs.send()  # the epochs a failed or interrupted run did finish stay recorded
        interrupted = isinstance(err, KeyboardInterrupt)
        mlflow.set_tag("ffbench.error", (str(err) or type(err).__name__)[:5000])
        mlflow.log_text(traceback.format_exc(), "error.txt")
        mlflow.end_run(RunStatus.to_string(RunStatus.KILLED if interrupted else RunStatus.FAILED))
        raise
    _epochs.send()
    if cfg.tracking.log_artifacts:
        mlflow.log_text(OmegaConf.to_yaml(cfg, resolve=True), "config.yaml")
        mlflow.log_artifacts(str(Path(hydra.runtime.output_dir, hydra.output_subdir)), "hydra")
    mlflow.end_run()


def log_metrics(metrics: dict, step: int) -> None:
    mlflow.log_metrics(metrics, step=step)


class _EpochQueue:
    """Per-epoch metrics of the active run, sent to the store at most once a second as one
    batch: a round trip per epoch (15 ms on SQLite) costs more than an epoch of a small net.
    job_run sends what is left when the run ends, however it ends."""

    INTERVAL_S = 1.0

    def __init__(self):
        self.pending: list[Metric] = []
        self.sent_at = 0.0

    def add(self, metrics: dict, step: int) -> None:
        now = time.time()
        stamp = int(now * 1000)
        self.pending += [Metric(k, float(v), stamp, step) for k, v in metrics.items()]
        if now - self.sent_at >= self.INTERVAL_S:
            self.send()

    def send(self) -> None:
        run = mlflow.active_run()
        if self.pending and run is not None:
            MlflowClient().log_batch(run.info.run_id, metrics=self.pending)
        self.pending = []
        self.sent_at = time.time()


_epochs = _EpochQueue()


def log_epoch(metrics: dict, step: int) -> None:
    """Record one epoch's metrics (sent within a second, or when the run ends)."""
    _epochs.add(metrics, step)


def set_tag(key: str, value: str) -> None:
    mlflow.set_tag(key, value)


class SweepRun(Callback):
    """Hydra callback: a parent MLflow run around a multirun, FINISHED only if every job was."""

    def on_multirun_start(self, config, **kwargs) -> None:
        launch_dir = config.hydra.runtime.cwd
        try:  # every job composes and the server answers, or nothing is written
            preflight.check_sweep(config)
            self.client = _client(config.tracking, launch_dir)
        except Exception as err:  # Hydra would only warn about a callback's error, and go on
            preflight.exit_with(err)
        sweep_dir = Path(config.hydra.sweep.dir)
        self.sweep_dir = sweep_dir.resolve()
        run = self.client.create_run(
            experiment_id(self.client, config.tracking, launch_dir),
            run_name=f"sweep-{sweep_dir.parent.name}-{sweep_dir.name}",
            tags={
                "ffbench.sweep_dir": str(sweep_dir.resolve()),
                "ffbench.overrides": " ".join(config.hydra.overrides.task),
                "ffbench.git_commit": git_commit(),
            },
        )
        self.run_id = run.info.run_id
        os.environ[PARENT_ENV] = self.run_id
        # A failing job makes Hydra raise before on_multirun_end: close the parent at exit.
        atexit.register(self._close)

    def on_multirun_end(self, config, **kwargs) -> None:
        self._close()

    def _close(self) -> None:
        parent = self.client.get_run(self.run_id).info
        if parent.status != "RUNNING":
            return
        children = self.client.search_runs(
            [parent.experiment_id],
            filter_string=f"tags.mlflow.parentRunId = '{self.run_id}'",
        )
        statuses = [child.info.status for child in children]
        for status in ("FINISHED", "FAILED", "KILLED"):
            self.client.log_metric(self.run_id, f"jobs_{status.lower()}", statuses.count(status))
        try:  # the comparison table and pictures, into the sweep folder and the parent run
            for path in compare.report(children, self.client, self.sweep_dir):
                self.client.log_artifact(self.run_id, str(path))
        except Exception as err:  # a picture is not worth losing the sweep's status over
            logging.getLogger("ffbench").warning("no comparison report: %s", err)
        ok = bool(statuses) and all(s == "FINISHED" for s in statuses)
        self.client.set_terminated(self.run_id, "FINISHED" if ok else "FAILED")
        os.environ.pop(PARENT_ENV, None)
