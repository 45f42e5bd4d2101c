"""The MLflow run of one job: opened around the job, recording its params, tags and metrics,
and closed FINISHED, FAILED or KILLED, never left RUNNING; and the lookup of a FINISHED run
that already holds a job's result.

Where the runs go is store.py's job; the parent run of a sweep is sweep.py's.
"""

import functools
import logging
import os
import signal
import socket
import subprocess
import time
import traceback
import warnings
from contextlib import contextmanager
from pathlib import Path

import mlflow
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from mlflow.data.dataset_source_registry import resolve_dataset_source
from mlflow.entities import Metric, RunStatus
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from ffbench import liveness, store
from ffbench.config import GROUPS

# A multirun's parent run id, handed to its jobs (also to jobs in other processes).
PARENT_ENV = "FFBENCH_PARENT_RUN_ID"

# The data.Splits splits, as MLflow dataset contexts (the run page and Dataset column show them).
CONTEXTS = {"train": "training", "val": "validation", "test": "test"}

# tracking.log_model: the learner is pickled (its classes load from the installed ffbench):
# MLflow's default, torch.export, cannot trace FF's per-label goodness loop. Said once here,
# not in a warning on every run.
logging.getLogger("mlflow.pytorch").setLevel(logging.ERROR)


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
    client = store.connect(cfg.tracking, hydra.runtime.cwd)
    runs = client.search_runs(
        [store.experiment_id(client, cfg.tracking, hydra.runtime.cwd)],
        # a run that holds a result has its test accuracy (a FINISHED run without one was
        # closed by something else than its job: MLflow's exit handler, a user)
        filter_string=f"tags.`ffbench.settings_hash` = '{settings_hash}'"
        " and attributes.status = 'FINISHED' and metrics.test_accuracy >= 0",
        order_by=["attributes.start_time DESC"],
    )
    return next((run for run in runs if "ffbench.skipped" not in run.data.tags), None)


CHECKPOINT = "ffbench.checkpoint"  # tag: the file of a run's last checkpoint


def resumable_run(cfg, settings_hash: str):
    """The newest run of these settings that stopped before its end (KILLED, or FAILED: a
    crash, a lost process) and whose checkpoint file is still there, or None."""
    hydra = HydraConfig.get()
    client = store.connect(cfg.tracking, hydra.runtime.cwd)
    experiment_id = store.experiment_id(client, cfg.tracking, hydra.runtime.cwd)
    liveness.mark_lost(client, [experiment_id])  # a job killed with -9 is resumable too
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`ffbench.settings_hash` = '{settings_hash}'"
        " and attributes.status != 'FINISHED' and attributes.status != 'RUNNING'",
        order_by=["attributes.start_time DESC"],
    )
    return next((r for r in runs if Path(r.data.tags.get(CHECKPOINT, "")).is_file()), None)


class JobRun:
    """The MLflow run of one job, as job_run yields it: what the job records goes through it.

    Per-epoch metrics wait in the run's own queue and reach the store at most once a second, as
    one batch: a round trip per epoch costs more than an epoch of a small net
    (docs/performance.md).
    job_run sends what is left when the run ends, however it ends. The queue belongs to the run,
    so that the jobs of a sweep sharing a process share nothing."""

    SEND_EVERY_S = 1.0

    def __init__(self, run: mlflow.ActiveRun, client: MlflowClient):
        self.info = run.info  # run_id, run_name, ...
        self.client = client
        self.checkpoint: Path | None = None  # logged as an artifact when the run ends
        self.pending: list[Metric] = []
        self.sent_at = 0.0

    def log_metrics(self, metrics: dict, step: int) -> None:
        """Record metrics at once (the final ones, or those a skipped job copies)."""
        mlflow.log_metrics(metrics, step=step, run_id=self.info.run_id)

    def log_epoch(self, metrics: dict, step: int) -> None:
        """Record one epoch's metrics (sent within a second, or when the run ends)."""
        now = time.time()
        stamp = int(now * 1000)
        self.pending += [Metric(k, float(v), stamp, step) for k, v in metrics.items()]
        if now - self.sent_at >= self.SEND_EVERY_S:
            self.flush()

    def flush(self) -> None:
        """Send the queued epochs."""
        if self.pending:
            self.client.log_batch(self.info.run_id, metrics=self.pending)
        self.pending = []
        self.sent_at = time.time()

    def set_tag(self, key: str, value: str) -> None:
        self.client.set_tag(self.info.run_id, key, value)

    def keep_checkpoint(self, path: Path) -> None:
        """The run's checkpoints go to `path`: a rerun finds them there (resumable_run)."""
        self.checkpoint = path
        self.set_tag(CHECKPOINT, str(path))

    def last_step(self) -> int:
        """The last pass whose metrics the run holds (0 for none)."""
        history = self.client.get_metric_history(self.info.run_id, "train_loss")
        return max((m.step for m in history), default=0)

    def _log_checkpoint(self) -> None:
        if self.checkpoint is not None and self.checkpoint.is_file():
            mlflow.log_artifact(str(self.checkpoint), "checkpoint")

    def log_datasets(self, splits) -> None:
        """The training, validation and test splits (data.Splits) as the run's dataset inputs:
        the data set's name, a digest of the examples as trained on, the file they were read
        from, and the context, so that the UI names the data and a run leads to its files."""
        datasets = [
            mlflow.data.from_numpy(
                getattr(splits, f"x_{split}").cpu().numpy(),
                targets=getattr(splits, f"y_{split}").cpu().numpy(),
                source=_file_source(splits.sources[split]),
                name=splits.name,
            )
            for split in CONTEXTS
        ]
        contexts = list(CONTEXTS.values())
        tags = [{}] * len(contexts)
        try:
            mlflow.log_inputs(datasets, contexts=contexts, tags_list=tags)
        except mlflow.exceptions.MlflowException:
            # Two jobs logging the same data set at once (parallel workers): MLflow's SQL
            # store looks the data set up, then inserts it, and the later insert fails on its
            # unique key. The data set is there now: a second call links it to this run.
            mlflow.log_inputs(datasets, contexts=contexts, tags_list=tags)

    def log_model(self, learner: torch.nn.Module, example: torch.Tensor, step: int) -> str:
        """`learner` as an MLflow model of the run ("Logged models"); returns its URI. Loaded
        back, it maps rows like `example` (as the job fed them to the net) to labels. Metrics
        logged after it at the same `step` are linked to it."""
        example = example.cpu()
        with torch.no_grad():
            labels = learner.cpu()(example)
        info = mlflow.pytorch.log_model(
            learner,
            name="model",
            serialization_format="pickle",
            signature=mlflow.models.infer_signature(example.numpy(), labels.numpy()),
            # given, not inferred: inference loads the model in a subprocess, seconds per run
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", "ffbench"],
            step=step,
        )
        return info.model_uri


def _file_source(path: str):
    """MLflow's dataset source for a local file. (MLflow 3 registers that kind of source twice,
    then warns on every path that it is ambiguous between the two: it is not.)"""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "The specified dataset source can be interpreted")
        return resolve_dataset_source(path)


def _slurm_job() -> dict:
    """The SLURM job this process runs in, as squeue, sacct and scancel name it (an array's
    task as ARRAY_TASK, also the name of submitit's log folder .submitit/ARRAY_TASK/)."""
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    job = f"{array}_{task}" if array and task else os.environ.get("SLURM_JOB_ID")
    return {"ffbench.slurm_job_id": job} if job else {}


def _start(cfg, tags: dict | None, resume=None) -> JobRun:
    """Open the MLflow run of the current Hydra job (once the store's lost runs are marked),
    or reopen `resume`, an earlier run of the same settings that it continues."""
    hydra = HydraConfig.get()
    client = store.connect(cfg.tracking, hydra.runtime.cwd)
    experiment_id = store.experiment_id(client, cfg.tracking, hydra.runtime.cwd)
    liveness.mark_lost(client, [experiment_id])
    choices = {group: hydra.runtime.choices[group] for group in GROUPS}
    tags = {
        **choices,
        "ffbench.output_dir": hydra.runtime.output_dir,
        "ffbench.overrides": " ".join(hydra.overrides.task),
        "ffbench.git_commit": git_commit(),
        # where the job ran, to find its process (and logs) on a shared machine or cluster
        "ffbench.process": f"{socket.gethostname()}:{os.getpid()}",
        **liveness.tags(cfg.tracking.heartbeat_s),
        **_slurm_job(),
        **(tags or {}),
    }
    parent = None
    if hydra.mode == RunMode.MULTIRUN:
        parent = os.environ.get(PARENT_ENV)
        tags["ffbench.job_num"] = str(hydra.job.num)
    mlflow.set_system_metrics_sampling_interval(cfg.tracking.system_metrics_interval_s)
    if resume is not None:  # the same run goes on: its parent, name and history stay
        started = mlflow.start_run(
            run_id=resume.info.run_id, log_system_metrics=cfg.tracking.system_metrics
        )
        tags["ffbench.resumed"] = str(int(resume.data.tags.get("ffbench.resumed", "0")) + 1)
        if parent:  # it moves into the sweep that finishes it, whose parent then counts it
            tags["mlflow.parentRunId"] = parent
        mlflow.set_tags(tags)
        client.delete_tag(resume.info.run_id, "ffbench.error")  # it goes on, not failed
    else:
        started = mlflow.start_run(
            experiment_id=experiment_id,
            run_name=run_name(choices),
            parent_run_id=parent,
            tags=tags,
            log_system_metrics=cfg.tracking.system_metrics,
        )
    try:  # a config that does not resolve (a failed job of an optuna sweep) keeps its raw values
        values = OmegaConf.to_container(cfg, resolve=True)
    except Exception:
        values = OmegaConf.to_container(cfg, resolve=False)
    params = flatten(values) | choices
    if resume is not None:  # params are written once: a resumed run keeps its first values
        params = {k: v for k, v in params.items() if k not in resume.data.params}
    mlflow.log_params(params)
    return JobRun(started, client)


def _reason(err: BaseException) -> str:
    if isinstance(err, SystemExit):  # submitit exits so when SLURM requeues the job
        return f"the process exited with status {err.code} (a scheduler's requeue or timeout)"
    return str(err) or type(err).__name__


@contextmanager
def _signals_held():
    """Ctrl-C and SIGTERM wait until the block is done, then arrive as they would have."""
    held: list[int] = []
    try:
        previous = {
            signum: signal.signal(signum, lambda number, frame: held.append(number))
            for signum in (signal.SIGINT, signal.SIGTERM)
        }
    except ValueError:  # not the main thread, which is where Python handles signals
        yield
        return
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for signum in held:
            signal.raise_signal(signum)


def _end_failed(run: JobRun, err: BaseException) -> None:
    """End the run FAILED (KILLED if interrupted) with its reason and traceback. A second
    signal (a scheduler's SIGTERM right after its requeue signal) waits: cut short, this would
    leave MLflow's own exit handler to close the run FINISHED."""
    with _signals_held():
        try:
            run.flush()  # the epochs a failed or interrupted run did finish stay recorded
            run._log_checkpoint()
            mlflow.set_tag("ffbench.error", _reason(err)[:5000])
            mlflow.log_text("".join(traceback.format_exception(err)), "error.txt")
        finally:
            status = RunStatus.KILLED if isinstance(err, KeyboardInterrupt) else RunStatus.FAILED
            mlflow.end_run(RunStatus.to_string(status))


@contextmanager
def job_run(cfg, tags: dict | None = None, resume=None):
    """One MLflow run for the current Hydra job, ended FINISHED, FAILED or KILLED, never left
    RUNNING (a process that dies silently stops its heartbeat: liveness.py); yields its JobRun;
    `tags` are added to the standard ones. `resume`: an earlier run that this job continues."""
    run = _start(cfg, tags, resume)
    try:
        with liveness.Heartbeat(run.client, run.info.run_id, cfg.tracking.heartbeat_s):
            yield run
        run.flush()
        run._log_checkpoint()
        if cfg.tracking.log_artifacts:
            hydra = HydraConfig.get()
            mlflow.log_text(OmegaConf.to_yaml(cfg, resolve=True), "config.yaml")
            output = Path(hydra.runtime.output_dir, hydra.output_subdir)
            mlflow.log_artifacts(str(output), "hydra")
    except BaseException as err:
        _end_failed(run, err)
        raise
    mlflow.end_run()


def failed_job(cfg, err: BaseException) -> None:
    """The FAILED run of a sweep's job that failed before it could train (its data, its net),
    so that the parent counts it, the report lists it and a rerun retries it."""
    _end_failed(_start(cfg, None), err)
