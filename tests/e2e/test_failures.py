"""Every job of a sweep leaves a record, whatever fails: a job that fails loading its data,
building its net or training is a FAILED child run with its reason, counted by the parent
(then FAILED) and listed by the report, with the basic and the joblib launcher. A run whose
process dies without a word (kill -9) is marked FAILED ("process lost") by the next ffbench
on the store once its heartbeat has stopped, and a rerun of its sweep trains it again; a killed
run continues from its checkpoint.

Minutes of sweeps, kills and restarts: marked slow, run by `make test-faults` (and CI)."""

import os
import signal
import subprocess
from pathlib import Path

import pytest
import torch
from helpers import (
    FFBENCH,
    QUICK,
    all_runs,
    run_ffbench,
    start_ffbench,
    store,
    wait_for,
    wait_for_epoch,
)

from ffbench import liveness

pytestmark = pytest.mark.slow

OFFLINE = "dataset.mirror=http://127.0.0.1:9/"  # nothing listens there: as if offline
# (the sweep's swept key and values, the failing value, a word of its reason)
FAILURE_POINTS = {
    "data": ("dataset", "digits,mnist", "mnist", "could not be downloaded"),
    "model": ("model.name", "mlp,conv", "conv", "is larger than the"),
    "training": ("optimizer.lr", "0.01,1e10", "10000000000.0", "training diverged"),
}
EXTRA = {  # what makes the failing value fail
    "data": ["dataset.root=/nonexistent/data", OFFLINE, "dataset.val_size=50"],
    "model": ["model.kernel=12"],
    "training": ["model.norm=none", "optimizer=sgd"],
}
LAUNCHERS = {"basic": [], "joblib": ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]}


def parent_and_jobs(workdir):
    runs = all_runs(workdir)
    [parent] = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    return parent, [r for r in runs if r is not parent]


@pytest.mark.parametrize("launcher", LAUNCHERS)
@pytest.mark.parametrize("point", FAILURE_POINTS)
def test_a_job_failing_anywhere_is_a_failed_run_the_parent_counts(workdir, point, launcher):
    key, values, failing, reason = FAILURE_POINTS[point]
    overrides = ["-m", f"{key}={values}", *EXTRA[point], *LAUNCHERS[launcher], *QUICK]
    result = run_ffbench(workdir, *overrides)
    assert result.returncode == 1, result.stderr[-2000:]
    parent, jobs = parent_and_jobs(workdir)
    assert len(jobs) == 2
    by_status = {run.info.status: run for run in jobs}
    assert set(by_status) == {"FINISHED", "FAILED"}
    failed = by_status["FAILED"]
    assert failed.data.params[key] == failing
    assert reason in failed.data.tags["ffbench.error"]
    assert failed.data.tags["mlflow.parentRunId"] == parent.info.run_id
    artifacts = {a.path for a in store(workdir).list_artifacts(failed.info.run_id)}
    assert "error.txt" in artifacts  # the traceback
    assert parent.info.status == "FAILED"
    assert parent.data.metrics["jobs_finished"] == 1 and parent.data.metrics["jobs_failed"] == 1
    # the sweep's report lists the failed job apart, with its reason
    [line] = [line for line in result.stdout.splitlines() if "│ FAILED │" in line]
    assert f"{key}={failing}" in line


def start_running(workdir, *overrides: str) -> subprocess.Popen:
    """ffbench in its own process group, returned once its job trains."""
    process = start_ffbench(workdir, *overrides)
    wait_for_epoch(process, workdir, 1)
    return process


def last_beat(workdir, run) -> int:
    return int(store(workdir).get_run(run.info.run_id).data.tags[liveness.BEAT])


def beats_missed(workdir, *runs) -> None:
    """The runs of a dead process as they are once it has missed more beats than
    liveness.LOST_AFTER_BEATS: their last beat set back by more than that many intervals,
    instead of waiting for the clock to get there."""
    client = store(workdir)
    for run in runs:
        every = float(run.data.tags[liveness.EVERY])
        earlier = last_beat(workdir, run) - (liveness.LOST_AFTER_BEATS + 1) * every - 1
        client.set_tag(run.info.run_id, liveness.BEAT, f"{earlier:.0f}")


def test_a_killed_job_is_marked_lost_and_its_sweep_rerun_trains_it(workdir):
    sweep = ["-m", "algo=ff", "tracking.heartbeat_s=1", "model.width=32", "trainer.num_threads=1"]
    process = start_running(workdir, *sweep, "trainer.epochs=100000")
    parent, [job] = parent_and_jobs(workdir)
    first = int(job.data.tags[liveness.BEAT])  # written as the run started
    wait_for(lambda: last_beat(workdir, job) > first, process, "a beat after the first")
    os.killpg(process.pid, signal.SIGKILL)  # the sweep and its job, without a word
    process.wait()
    parent, [job] = parent_and_jobs(workdir)
    assert (parent.info.status, job.info.status) == ("RUNNING", "RUNNING")

    beats_missed(workdir, parent, job)
    result = run_ffbench(workdir, *sweep, "trainer.epochs=2")  # the same job, shorter
    assert result.returncode == 0, result.stderr[-2000:]
    runs = {r.info.run_id: r for r in all_runs(workdir)}
    for lost in (parent, job):
        run = runs[lost.info.run_id]
        assert run.info.status == "FAILED"
        assert run.data.tags["ffbench.error"].startswith("process lost: no heartbeat since")
    [again] = [
        r for i, r in runs.items() if "ffbench.job_num" in r.data.tags and i != job.info.run_id
    ]
    assert again.info.status == "FINISHED" and "ffbench.skipped" not in again.data.tags


def test_a_live_run_is_not_marked_lost(workdir):
    """A long epoch holds no beat back: the heartbeat is a thread of its own."""
    overrides = ["tracking.heartbeat_s=1", "model.width=32", "trainer.epochs=100000"]
    process = start_running(workdir, *overrides)
    try:
        [run] = all_runs(workdir)
        start = int(run.data.tags[liveness.BEAT])
        missed = liveness.LOST_AFTER_BEATS + 1  # as many seconds as beats (heartbeat_s=1)
        # long enough that a heartbeat held back by the epochs would count as lost by now
        wait_for(lambda: last_beat(workdir, run) > start + missed, process, "the beats")
        report = run_ffbench(workdir, exe=str(Path(FFBENCH).parent / "ffbench-report"))
        assert report.returncode == 0, report.stderr
        [run] = all_runs(workdir)
        assert run.info.status == "RUNNING"
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait()
    [run] = all_runs(workdir)
    assert run.info.status == "KILLED"


# BP with the memory meter, epochs of a few seconds on the digits: its backward passes release
# saved tensors through weakref finalizers, where a stop's KeyboardInterrupt often lands and is
# dropped by Python (3 times in 8 tries); before stops.py that stop waited for the epoch's end.
LONG_EPOCHS = [
    "algo=bp",
    "model.depth=4",
    "model.width=2000",
    "trainer.batch_size=32",
    "trainer.epochs=5",
    "trainer.num_threads=1",
    "measure.memory=true",
    "trainer.checkpoint=true",
]


def test_a_stop_mid_epoch_ends_the_run_killed_with_the_epochs_it_finished(workdir):
    process = start_running(workdir, *LONG_EPOCHS)  # epoch 1 is logged
    os.killpg(process.pid, signal.SIGTERM)  # in epoch 2
    _, stderr = process.communicate(timeout=120)
    assert process.returncode != 0
    [run] = all_runs(workdir)
    assert run.info.status == "KILLED", stderr[-3000:]
    assert run.data.tags["ffbench.error"] == "stopped by signal SIGTERM"
    assert [step for step, _ in history(workdir, run.info.run_id, "train_loss")] == [1]
    # acted on within epoch 2: its pass was never finished, so never saved (a stop left for
    # the end of the epoch let it finish and save it, then ended the run with epoch 1 only)
    checkpoint = torch.load(run.data.tags["ffbench.checkpoint"], weights_only=False)
    assert checkpoint["step"] == 1


# Epochs of about a second on the digits, so that a kill lands between two of them.
CHECKPOINTED = [
    "trainer.checkpoint=true",
    "trainer.epochs=6",
    "model.width=1024",
    "trainer.num_threads=1",
    "tracking.heartbeat_s=1",
]


def history(workdir, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in store(workdir).get_metric_history(run_id, key))


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL])
def test_a_killed_run_continues_from_its_checkpoint_as_if_never_stopped(tmp_path, signum):
    reference, interrupted = tmp_path / "reference", tmp_path / "interrupted"
    reference.mkdir(), interrupted.mkdir()
    assert run_ffbench(reference, *CHECKPOINTED).returncode == 0
    [whole] = all_runs(reference)

    process = start_ffbench(interrupted, *CHECKPOINTED)
    wait_for_epoch(process, interrupted, 3)
    os.killpg(process.pid, signum)
    process.wait()
    [stopped] = all_runs(interrupted)
    saved = torch.load(stopped.data.tags["ffbench.checkpoint"], weights_only=False)["step"]
    assert 3 <= saved < 6, "the kill came too late to test anything"
    # SIGKILL may lose the last second's epochs on their way to MLflow: the checkpoint has them
    if signum == signal.SIGKILL:  # its heartbeat stopped: the next ffbench marks it lost
        beats_missed(interrupted, stopped)

    result = run_ffbench(interrupted, *CHECKPOINTED)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"continuing run {stopped.info.run_id}" in result.stdout
    [resumed] = all_runs(interrupted)  # the same run, finished
    assert resumed.info.run_id == stopped.info.run_id and resumed.info.status == "FINISHED"
    assert resumed.data.tags["ffbench.resumed"] == "1"
    assert "ffbench.error" not in resumed.data.tags
    for key in ("train_loss", "val_accuracy", "layer0_loss"):
        assert history(interrupted, resumed.info.run_id, key) == history(
            reference, whole.info.run_id, key
        ), key
    for key in ("test_accuracy", "train_accuracy", "val_accuracy"):
        assert resumed.data.metrics[key] == whole.data.metrics[key], key
    artifacts = {
        a.path for a in store(interrupted).list_artifacts(resumed.info.run_id, "checkpoint")
    }
    assert artifacts == {"checkpoint/checkpoint.pt"}
