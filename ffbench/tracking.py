"""The MLflow run of one job: opened around the job, recording its params, tags and metrics,
and closed FINISHED, FAILED or KILLED, never left RUNNING; and the lookup of a FINISHED run
that already holds a job's result.

How a record reaches the store (journal first; offline, reconnect and replay) is runlink.py's
job; where the runs go is store.py's; the parent run of a sweep is sweep.py's.
"""

import functools
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import traceback
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import mlflow
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from mlflow.data.dataset_source_registry import resolve_dataset_source
from mlflow.entities import RunStatus
from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from ffbench import journal, liveness, store
from ffbench.config import GROUPS, ignored
from ffbench.runlink import RunLink, TrackingOffline
from ffbench.tags import (
    CHECKPOINT,
    ERROR,
    GIT_COMMIT,
    JOB_NUM,
    OUTPUT_DIR,
    OVERRIDES,
    PROCESS,
    RESUMED,
    SETTINGS_HASH,
    SKIPPED,
    SLURM_JOB_ID,
)

if TYPE_CHECKING:
    import torch

log = logging.getLogger("ffbench")

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


def run_name(choices: dict, cfg) -> str:
    """Readable name such as ff-sumsq-relu-mnist: the goodness only where the job reads it
    (not bp's, config.ignored)."""
    parts = [choices["algo"]]
    if not ignored(cfg, "goodness.name"):
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


def _lookup(cfg, search):
    """search(client, experiment_id) on the job's store. A sweep's job whose tracking server
    is away gets None (it then trains, recorded offline: JobRun); a single run stops."""
    hydra = HydraConfig.get()
    try:
        client = store.connect(cfg.tracking, hydra.runtime.cwd)
        return search(client, store.experiment_id(client, cfg.tracking, hydra.runtime.cwd))
    except Exception:
        uri = store.tracking_uri(cfg.tracking, hydra.runtime.cwd)
        reason = store.unreachable(uri)
        if hydra.mode != RunMode.MULTIRUN or not reason:
            raise
        log.warning(
            "no look-up of earlier runs: the tracking server at %s is away (%s)", uri, reason
        )
        return None


def finished_run(cfg, settings_hash: str):
    """The newest run of the experiment that trained these settings (ffbench/settings.py) and
    ended FINISHED, or None. FAILED and KILLED runs never count, nor skipped ones (they point to
    the run holding the result), nor deleted ones."""

    def search(client, experiment_id):
        runs = client.search_runs(
            [experiment_id],
            # a run that holds a result has its test accuracy (a FINISHED run without one was
            # closed by something else than its job: a user)
            filter_string=f"tags.`{SETTINGS_HASH}` = '{settings_hash}'"
            " and attributes.status = 'FINISHED' and metrics.test_accuracy >= 0",
            order_by=["attributes.start_time DESC"],
        )
        return next((run for run in runs if SKIPPED not in run.data.tags), None)

    return _lookup(cfg, search)


def resumable_run(cfg, settings_hash: str):
    """The newest run of these settings that stopped before its end (KILLED, or FAILED: a
    crash, a lost process) and whose checkpoint file is still there, or None."""

    def search(client, experiment_id):
        liveness.mark_lost(client, [experiment_id])  # a job killed with -9 is resumable too
        runs = client.search_runs(
            [experiment_id],
            filter_string=f"tags.`{SETTINGS_HASH}` = '{settings_hash}'"
            " and attributes.status != 'FINISHED' and attributes.status != 'RUNNING'",
            order_by=["attributes.start_time DESC"],
        )
        return next((r for r in runs if Path(r.data.tags.get(CHECKPOINT, "")).is_file()), None)

    return _lookup(cfg, search)


class MetricQueue:
    """Per-epoch metric rows waiting to reach the store at most once every SEND_EVERY_S, as one
    batch: a round trip per epoch costs more than an epoch of a small net
    (docs/performance.md). Each run has its own, so that the jobs of a sweep sharing a process
    share nothing."""

    SEND_EVERY_S = 1.0

    def __init__(self):
        self.rows: list[list] = []  # journaled, not sent yet
        self.sent_at = 0.0

    def add(self, rows: list[list], now: float) -> bool:
        """Queue `rows`; True when it is time to send the queue."""
        self.rows += rows
        return now - self.sent_at >= self.SEND_EVERY_S

    def take(self) -> list[list]:
        """The queued rows, to send now; the queue is empty then."""
        self.sent_at = time.time()
        rows, self.rows = self.rows, []
        return rows


class LiveSigns:
    """Signs of a live process, sent once the run is online and until it ends, never
    journaled: its heartbeat (liveness.py) and MLflow's system metrics sampler."""

    def __init__(self, cfg, uri: str):
        self.cfg, self.uri = cfg, uri  # the TrackingConfig
        self.heartbeat: liveness.Heartbeat | None = None
        self.monitor: SystemMetricsMonitor | None = None

    def start(self, client: MlflowClient, run_id: str) -> None:
        """Start what is not running yet (a reconnection calls this again)."""
        if self.heartbeat is None:
            every = self.cfg.heartbeat_s
            self.heartbeat = liveness.Heartbeat(client, run_id, every).start()
        if self.cfg.system_metrics and self.monitor is None:
            self.monitor = SystemMetricsMonitor(
                run_id, self.cfg.system_metrics_interval_s, tracking_uri=self.uri
            )
            self.monitor.start()

    def stop(self) -> None:
        if self.monitor is not None:
            try:
                self.monitor.finish()
            except Exception:  # a sampler whose last send failed: the run's end matters more
                pass
        if self.heartbeat is not None:
            self.heartbeat.stop()


class JobRun:
    """The MLflow run of one job, as job_run yields it: what the job records goes through it,
    into the job's journal first, then to the store, online or not (runlink.py); per-epoch
    metrics through its MetricQueue."""

    def __init__(self, cfg, launch_dir: str, folder: Path, name: str):
        self.name = name
        self.link = RunLink(cfg, launch_dir, folder, self._online)
        self.queue = MetricQueue()
        self.signs = LiveSigns(cfg, self.link.uri)
        self.checkpoint: Path | None = None  # logged as an artifact when the run ends
        self.model_id: str | None = None  # the logged model that final metrics link to

    def _online(self) -> None:
        """The store holds the journal now, the queued epochs too."""
        self.queue.rows = []
        if not self.link.ending:  # no heartbeat or sampler for a run that ends now
            self.signs.start(self.link.client, self.link.run_id)

    def log_metrics(self, metrics: dict, step: int) -> None:
        """Record metrics at once (the final ones, or those a skipped job copies)."""
        self.flush()
        rows = journal.metric_rows(metrics, step, int(time.time() * 1000))
        self.link.record("metrics", metrics=rows, model_id=self.model_id)

    def log_epoch(self, metrics: dict, step: int) -> None:
        """Record one epoch's metrics (sent within a second, or when the run ends)."""
        now = time.time()
        rows = journal.metric_rows(metrics, step, int(now * 1000))
        self.link.journal.append("metrics", metrics=rows)
        if self.queue.add(rows, now):
            self.flush()

    def flush(self) -> None:
        """Send the queued epochs (offline: ask the server again, at most every 10 s)."""
        rows = self.queue.take()  # journaled: a replay would send them
        if rows:
            self.link.send({"op": "metrics", "metrics": rows})

    def set_tags(self, tags: dict) -> None:
        self.link.record("tags", tags={k: str(v) for k, v in tags.items()})

    def set_tag(self, key: str, value: str) -> None:
        self.set_tags({key: value})

    def log_text(self, text: str, file: str) -> None:
        self.link.record("text", text=text, file=file)

    def log_files(self, path: Path, dest: str) -> None:
        """A file, or a folder's files, as artifacts under `dest`."""
        self.link.record("files", path=str(Path(path).resolve()), dest=dest)

    def keep_checkpoint(self, path: Path) -> None:
        """The run's checkpoints go to `path`: a rerun finds them there (resumable_run)."""
        self.checkpoint = path
        self.set_tag(CHECKPOINT, str(path))

    def log_checkpoint(self) -> None:
        if self.checkpoint is not None and self.checkpoint.is_file():
            self.log_files(self.checkpoint, "checkpoint")

    def last_step(self) -> int:
        """The last pass whose metrics the store holds (0 for none, or offline)."""
        if not self.link.reconnect():
            return 0
        history = self.link.client.get_metric_history(self.link.run_id, "train_loss")
        return max((m.step for m in history), default=0)

    def log_datasets(self, splits) -> None:
        """The training, validation and test splits (data.Splits) as the run's dataset inputs
        (dataset_rows). Two jobs logging the same data set at once (parallel workers): MLflow's
        SQL store looks the data set up, then inserts it, and the later insert fails on its
        unique key. The data set is there then: a second try links it to this run."""
        self.link.record("inputs", tries=2, datasets=dataset_rows(splits))

    def log_model(self, learner: "torch.nn.Module", example: "torch.Tensor", step: int) -> None:
        """`learner` as an MLflow model of the run ("Logged models"); metrics logged after it
        are linked to it. Not journaled: offline, the run has no model (a warning says so)."""
        if not self.link.reconnect():
            log.warning("no model logged: the tracking server at %s is away", self.link.uri)
            return
        self.model_id = log_model(self.link.run_id, learner, example, step)

    def end(self, status: str) -> None:
        """Journal the run's end and send it; offline, wait up to tracking.offline_wait_s for
        the server, then raise TrackingOffline."""
        self.link.ending = True
        self.signs.stop()
        self.flush()
        self.link.record("end", status=status, time=int(time.time() * 1000))
        self.link.close(self.name)


def dataset_rows(splits) -> list[dict]:
    """The journal's rows of the training, validation and test splits: the data set's name, a
    digest of the examples as trained on, the file they were read from, and the context, so
    that the UI names the data and a run leads to its files."""
    inputs = [
        (
            mlflow.data.from_numpy(
                getattr(splits, f"x_{split}").cpu().numpy(),
                targets=getattr(splits, f"y_{split}").cpu().numpy(),
                source=_file_source(splits.sources[split]),
                name=splits.name,
            )._to_mlflow_entity(),  # the entity mlflow.log_inputs would make of it
            context,
        )
        for split, context in CONTEXTS.items()
    ]
    return journal.dataset_rows(inputs)


def log_model(run_id: str, learner: "torch.nn.Module", example: "torch.Tensor", step: int) -> str:
    """Log `learner` as an MLflow model of run `run_id`; its model id. Loaded back, it maps
    rows like `example` (as the job fed them to the net) to labels."""
    import torch  # here: ffbench-sync imports this module and never trains

    example = example.cpu()
    with torch.no_grad():
        labels = learner.cpu()(example)
    info = mlflow.pytorch.log_model(
        learner,
        name="model",
        run_id=run_id,
        serialization_format="pickle",
        signature=mlflow.models.infer_signature(example.numpy(), labels.numpy()),
        # given, not inferred: inference loads the model in a subprocess, seconds per run
        pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", "ffbench"],
        step=step,
    )
    return info.model_id


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
    return {SLURM_JOB_ID: job} if job else {}


def _start(cfg, tags: dict | None, resume=None) -> JobRun:
    """Open the MLflow run of the current Hydra job (once the store's lost runs are marked),
    or reopen `resume`, an earlier run of the same settings that it continues."""
    hydra = HydraConfig.get()
    choices = {group: hydra.runtime.choices[group] for group in GROUPS}
    sweeping = hydra.mode == RunMode.MULTIRUN
    name = resume.info.run_name if resume is not None else run_name(choices, cfg)
    start = journal.start_record(
        store.tracking_uri(cfg.tracking, hydra.runtime.cwd),
        store.experiment_name(cfg.tracking),
        name,
        _start_tags(cfg, choices, tags, resume),
        os.environ.get(PARENT_ENV) if sweeping else None,
        resume.info.run_id if resume is not None else None,
    )
    run = JobRun(cfg.tracking, hydra.runtime.cwd, Path(hydra.runtime.output_dir), name)
    # A sweep's job goes on without the server (it answered when the sweep began); a single
    # run stops at once with one line if the server does not answer.
    run.link.open(start, _params(cfg, choices, resume), may_start_offline=sweeping)
    return run


def _start_tags(cfg, choices: dict, tags: dict | None, resume) -> dict:
    """The tags a run starts with: its options, where and how it ran, its heartbeat, its
    SLURM job, `tags`, its number in its sweep, and how often it was resumed."""
    hydra = HydraConfig.get()
    tags = {
        **choices,
        OUTPUT_DIR: hydra.runtime.output_dir,
        OVERRIDES: " ".join(hydra.overrides.task),
        GIT_COMMIT: git_commit(),
        # where the job ran, to find its process (and logs) on a shared machine or cluster
        PROCESS: f"{socket.gethostname()}:{os.getpid()}",
        **liveness.tags(cfg.tracking.heartbeat_s),
        **_slurm_job(),
        **(tags or {}),
    }
    if hydra.mode == RunMode.MULTIRUN:
        tags[JOB_NUM] = str(hydra.job.num)
    if resume is not None:  # the same run goes on: its name and history stay
        tags[RESUMED] = str(int(resume.data.tags.get(RESUMED, "0")) + 1)
    return tags


def _params(cfg, choices: dict, resume) -> dict[str, str]:
    """The resolved config, flat, and the options chosen; a resumed run's new keys only."""
    try:  # a config that does not resolve (a failed job of an optuna sweep) keeps its raw values
        values = OmegaConf.to_container(cfg, resolve=True)
    except Exception:
        values = OmegaConf.to_container(cfg, resolve=False)
    params = flatten(values) | choices
    if resume is not None:  # params are written once: a resumed run keeps its first values
        params = {k: v for k, v in params.items() if k not in resume.data.params}
    return {k: str(v) for k, v in params.items()}


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
    leave the run RUNNING."""
    status = RunStatus.KILLED if isinstance(err, KeyboardInterrupt) else RunStatus.FAILED
    with _signals_held():
        try:
            run.log_checkpoint()  # the epochs a failed run did finish stay recorded (flushed)
            run.set_tag(ERROR, _reason(err)[:5000])
            run.log_text("".join(traceback.format_exception(err)), "error.txt")
            run.end(RunStatus.to_string(status))
        except TrackingOffline as offline:  # the job's own error comes first; this one too
            log.error("%s", offline)
            print(f"ffbench: {offline}", file=sys.stderr)


@contextmanager
def job_run(cfg, tags: dict | None = None, resume=None):
    """One MLflow run for the current Hydra job, ended FINISHED, FAILED or KILLED, never left
    RUNNING (a process that dies silently stops its heartbeat: liveness.py); yields its JobRun;
    `tags` are added to the standard ones. `resume`: an earlier run that this job continues.
    Raises TrackingOffline at the end if the tracking server went away and did not come back
    (the run is then in the job's journal: ffbench-sync)."""
    run = _start(cfg, tags, resume)
    try:
        yield run
        run.log_checkpoint()
        if cfg.tracking.log_artifacts:
            hydra = HydraConfig.get()
            run.log_text(OmegaConf.to_yaml(cfg, resolve=True), "config.yaml")
            run.log_files(Path(hydra.runtime.output_dir, hydra.output_subdir), "hydra")
    except BaseException as err:
        _end_failed(run, err)
        raise
    run.end(RunStatus.to_string(RunStatus.FINISHED))


def failed_job(cfg, err: BaseException) -> None:
    """The FAILED run of a sweep's job that failed before it could train (its data, its net),
    so that the parent counts it, the report lists it and a rerun retries it."""
    _end_failed(_start(cfg, None), err)
