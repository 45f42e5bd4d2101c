"""Every job of a sweep leaves a record, whatever fails: a job that fails loading its data,
building its net or training is a FAILED child run with its reason, counted by the parent
(then FAILED) and listed by the report, with the basic and the joblib launcher. A run whose
process dies without a word (kill -9) is marked FAILED ("process lost") by the next ffbench
on the store once its heartbeat has stopped, and a rerun of its sweep trains it again."""

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from helpers import FFBENCH, QUICK, all_runs, clean_env, run_ffbench, store

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


def training(workdir) -> bool:
    """Whether a job has logged an epoch (read from its log: a client on the store while
    ffbench creates it would race it to create the tables)."""
    logs = workdir.glob("outputs/*/*/*/**/ffbench.log")
    return any(" epoch 1 " in log.read_text() for log in logs)


def start_running(workdir, *overrides: str) -> subprocess.Popen:
    """ffbench in its own process group, returned once its job trains."""
    process = subprocess.Popen(
        [FFBENCH, *overrides],
        cwd=workdir,
        env=clean_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    deadline = time.monotonic() + 120
    while not training(workdir):
        assert process.poll() is None, process.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline, "no job run within 120 s"
        time.sleep(0.5)
    return process


def test_a_killed_job_is_marked_lost_and_its_sweep_rerun_trains_it(workdir):
    sweep = ["-m", "algo=ff", "tracking.heartbeat_s=1", "model.width=32", "trainer.num_threads=1"]
    process = start_running(workdir, *sweep, "trainer.epochs=100000")
    time.sleep(2)  # a few beats
    os.killpg(process.pid, signal.SIGKILL)  # the sweep and its job, without a word
    process.wait()
    parent, [job] = parent_and_jobs(workdir)
    assert (parent.info.status, job.info.status) == ("RUNNING", "RUNNING")
    assert int(job.data.tags["ffbench.heartbeat"]) >= job.info.start_time // 1000

    time.sleep(4)  # more than 3 missed beats
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
        time.sleep(5)
        report = run_ffbench(workdir, exe=str(Path(FFBENCH).parent / "ffbench-report"))
        assert report.returncode == 0, report.stderr
        [run] = all_runs(workdir)
        assert run.info.status == "RUNNING"
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait()
    [run] = all_runs(workdir)
    assert run.info.status == "KILLED"
