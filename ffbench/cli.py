"""The `ffbench` command: Hydra composes the config, this file wires one job together.

ffbench                                   FF on the bundled digits, a few seconds
ffbench algo=bp dataset=mnist             BP on MNIST: dataset.root or $FFBENCH_DATA, else downloaded
ffbench -m algo=ff,bp activation=relu,gelu
"""

import functools
import gc
import logging
import sys
import time
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import CompactHydraException
from hydra.types import RunMode
from omegaconf import DictConfig
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ffbench import experiment, stops, tracking
from ffbench.config import register_schemas, validate
from ffbench.errors import FFBenchError
from ffbench.measure import PeakMemory, static_memory_mb
from ffbench.settings import settings_hash
from ffbench.tags import CHECKPOINT, PEAK_RSS_METHOD, RESULT_RUN_ID, SETTINGS_HASH, SKIPPED

register_schemas()
console = Console()
log = logging.getLogger("ffbench")


def _progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f}  val acc {task.fields[val]:.4f}"),
        TimeElapsedColumn(),
        console=console,
    )


def _summary(title: str, final: dict) -> Table:
    table = Table(title=title, show_header=True)
    for column in (
        "test acc",
        "val acc",
        "train acc",
        "peak RSS MB",
        "train s",
        "wall s",
        "samples/s",
    ):
        table.add_column(column, justify="right")
    table.add_row(
        *(f"{final[k]:.4f}" for k in ("test_accuracy", "val_accuracy", "train_accuracy")),
        f"{final['peak_rss_mb']:.1f}" if "peak_rss_mb" in final else "-",
        *(f"{final[k]:.1f}" for k in ("train_time_s", "wall_time_s")),
        f"{final['samples_per_s']:.0f}",
    )
    return table


MEMORY_COLUMNS = {
    "peak_saved_activations_mb": "saved activations MB",
    "peak_total_mb": "total tensors MB",
    "rss_added_mb": "RSS added MB",
    "param_mb": "params MB",
    "optimizer_state_mb": "optimizer MB",
    "peak_cuda_allocated_mb": "CUDA alloc MB",
    "peak_cuda_reserved_mb": "CUDA reserved MB",
}


def _memory(final: dict) -> Table:
    """The memory figures besides RSS, in a table of their own to fit 80 columns."""
    table = Table(show_header=True)
    shown = [k for k in MEMORY_COLUMNS if k in final]
    for key in shown:
        table.add_column(MEMORY_COLUMNS[key], justify="right")
    table.add_row(*(f"{final[k]:.2f}" for k in shown))
    return table


def _pairs(metrics: dict) -> str:
    """key=value for the job's log file, one line per epoch."""
    return " ".join(f"{k}={v:.5g}" for k, v in metrics.items())


def main() -> None:
    """The console script: the Hydra app, then a quick exit."""
    try:
        app()
    finally:
        # Nothing is collected after this point: the OS frees torch's and mlflow's objects at
        # once, faster than tearing them down one by one (docs/performance.md).
        gc.freeze()


@hydra.main(version_base="1.3", config_path="pkg://ffbench.conf", config_name="config")
def app(cfg: DictConfig) -> float:
    # Ctrl-C, SIGTERM (kill, scancel) and SLURM's time-limit warning are acted on at the next
    # training step or evaluation chunk; the run then ends KILLED, or is requeued (stops.py).
    stops.install()
    try:
        result = run(cfg)
    except FFBenchError as err:
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            # Hydra records the job as failed, runs the others, then exits non-zero,
            # printing a compact exception's message without a traceback.
            raise CompactHydraException(str(err)) from None
        print(f"ffbench: error: {err}", file=sys.stderr)
        sys.exit(1)
    stops.after_job()  # a stop that came after the last step: the sweep goes no further
    return result


def _reuse(cfg: DictConfig, done, tags: dict, passes: int, data) -> float:
    """Record the job as skipped: a FINISHED run that points to `done`, the run holding the
    result, and carries its final metrics, so that every combination of a sweep has its row of
    numbers in the MLflow UI (the tag ffbench.skipped tells copies from measurements)."""
    original = done.info.run_id
    tags = tags | {
        SKIPPED: "true",
        RESULT_RUN_ID: original,
        "mlflow.note.content": f"Not trained: run {original} ({done.info.run_name}) holds the "
        "result of these settings; the metrics are copied from it.",
    }
    with tracking.job_run(cfg, tags) as run:
        run.log_datasets(data)
        run.log_metrics(done.data.metrics, step=passes)
    message = f"reused run {original} ({done.info.run_name}): FINISHED with the same settings"
    log.info(message)
    console.print(
        f"{run.name}: {message}; not trained (skip_finished=false trains anyway)",
        soft_wrap=True,
    )
    return done.data.metrics["val_accuracy"]


def _skip_finished(cfg: DictConfig) -> bool:
    """cfg.skip_finished, unless the key's old name `resume` is given: then that, with a warning."""
    if cfg.resume is None:
        return cfg.skip_finished
    _warn_resume_renamed(cfg.resume)
    return cfg.resume


@functools.cache  # once per process, not once per job of a sweep
def _warn_resume_renamed(value: bool) -> None:
    given = str(value).lower()
    print(
        f"ffbench: warning: resume={given} is deprecated: use skip_finished={given} instead",
        file=sys.stderr,
    )


def _record_failure(cfg: DictConfig, err: Exception) -> None:
    try:
        tracking.failed_job(cfg, err)
    except Exception as lost:  # the store itself failing: the job's own error says more
        log.warning("the failed job has no MLflow run: %s", lost)


def run(cfg: DictConfig) -> float:
    """One job: train, evaluate, record; returns the validation accuracy (the objective for
    sweepers: the test set never chooses anything)."""
    start = time.perf_counter()
    sweeping = HydraConfig.get().mode == RunMode.MULTIRUN
    job, device = _prepare(cfg, sweeping)
    tags = {SETTINGS_HASH: settings_hash(cfg, device.type)}
    # No duplicate work in a sweep: a FINISHED run with the same relevant settings holds the
    # result. A single run is a request to train (perhaps after editing the code): it always does.
    done = None
    if _skip_finished(cfg) and sweeping:
        done = tracking.finished_run(cfg, tags[SETTINGS_HASH])
    passes = len(experiment.training_plan(job))
    if done is not None:
        return _reuse(cfg, done, tags, passes, job.data)
    # A fresh meter per job: its peaks start at zero even when a sweep shares the process.
    memory = None
    if cfg.measure.memory:
        # the total, counted in the first pass of each stage, or in every pass (measure.total)
        params, every = job.learner.parameters(), cfg.measure.total
        memory = PeakMemory(device, params, job.optimizer, total=True, every_pass=every)
    earlier, start_from = _resumable(cfg, job, tags[SETTINGS_HASH])
    with tracking.job_run(cfg, tags, earlier) as run, _progress() as progress:
        if earlier is None:
            run.log_datasets(job.data)
        final, last = _train(cfg, job, run, progress, passes, memory, start_from)
        if memory is not None:
            final |= memory.metrics() | static_memory_mb(job.optimizer)
            run.set_tag(PEAK_RSS_METHOD, memory.method)
            if memory.method != "vmhwm":
                log.warning(
                    "peak RSS read by %s: no resettable /proc high-water mark", memory.method
                )
        if cfg.tracking.log_model:  # before the final metrics, which MLflow then links to it
            run.log_model(job.learner, job.data.x_test[:5], step=passes)
        final["wall_time_s"] = time.perf_counter() - start
        run.log_metrics(final, step=passes)
    final["val_accuracy"] = last["val_accuracy"]
    log.info("final %s", _pairs(final))
    console.print(_summary(run.name, final))
    if memory is not None:
        console.print(_memory(final))
    return final["val_accuracy"]


def _prepare(cfg: DictConfig, sweeping: bool):
    """(the job, its device): bad input stops here, before MLflow hears of a single run."""
    try:
        validate(cfg)
        device = experiment.resolve_device(cfg.trainer.device)
        return experiment.prepare(cfg, device), device
    except Exception as err:
        if sweeping:  # a sweep's job leaves a record, whatever fails: the parent counts it
            _record_failure(cfg, err)
        raise


def _resumable(cfg: DictConfig, job, settings: str):
    """(the killed or failed run of these settings that this job goes on with, its checkpoint
    loaded into `job`), or (None, None): no trainer.checkpoint, or no such run."""
    if not cfg.trainer.checkpoint:
        return None, None
    earlier = tracking.resumable_run(cfg, settings)
    if earlier is None:
        return None, None
    start_from = experiment.load_checkpoint(Path(earlier.data.tags[CHECKPOINT]), job)
    console.print(f"continuing run {earlier.info.run_id} after pass {start_from['step']}")
    return earlier, start_from


def _train(cfg: DictConfig, job, run, progress, passes: int, memory, start_from):
    """Train the job into its run, its progress on a bar; (the final metrics, the latest of
    each metric: val_accuracy of its latest evaluation)."""
    if start_from is not None:  # the passes saved but not sent before the process died
        sent = run.last_step()
        for step, metrics in enumerate(start_from["history"], start=1):
            if step > sent:
                run.log_epoch(metrics, step=step)
    checkpoint = None
    if cfg.trainer.checkpoint:
        checkpoint = Path(HydraConfig.get().runtime.output_dir, "checkpoint.pt")
        run.keep_checkpoint(checkpoint)
    bar = progress.add_task(run.name, total=passes, loss=0.0, val=0.0)
    if start_from is not None:
        progress.update(bar, completed=start_from["step"])

    last = {}  # the latest of each metric (val_accuracy: of its latest evaluation)
    for metrics in start_from["history"] if start_from else []:
        last.update(metrics)

    def on_epoch(epoch: int, metrics: dict) -> None:
        last.update(metrics)
        run.log_epoch(metrics, step=epoch)
        log.info("epoch %d %s", epoch, _pairs(metrics))
        progress.update(
            bar, completed=epoch, loss=metrics["train_loss"], val=last.get("val_accuracy", 0.0)
        )

    return experiment.train(job, on_epoch, memory, checkpoint, start_from), last
