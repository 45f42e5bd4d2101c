"""Nothing is lost when the tracking server goes away: a real `mlflow server` is stopped in the
middle of a sweep and started again, and every job still lands in it, complete, with metric
histories identical to what the job journaled; a job whose server never comes back exits 1
with one line naming its folder, and `ffbench-sync FOLDER` records it, once, however often it
runs.

Minutes of servers stopping and starting: marked slow, run by `make test-faults` (and CI)."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import clean_env, free_port, mlflow_server, start_ffbench, wait_for, wait_for_epoch
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow

SYNC = shutil.which("ffbench-sync", path=str(Path(sys.executable).parent)) or "ffbench-sync"
# long enough to stop the server mid-job (a digits pass of a width-32 net takes ~0.05 s)
EPOCHS = 80
JOB = ["model.width=32", "trainer.num_threads=1", f"trainer.epochs={EPOCHS}"]


def journal_metrics(folder: Path) -> dict[str, list]:
    """Each metric's (step, timestamp, value) rows as the job journaled them."""
    rows: dict[str, list] = {}
    for line in (folder / "mlflow-journal.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record["op"] == "metrics":
            for key, value, stamp, step in record["metrics"]:
                rows.setdefault(key, []).append((step, stamp, value))
    return rows


def stored_metrics(client: MlflowClient, run_id: str) -> dict[str, list]:
    keys = client.get_run(run_id).data.metrics
    return {
        key: [(m.step, m.timestamp, m.value) for m in client.get_metric_history(run_id, key)]
        for key in keys
    }


def sync(*folders: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [SYNC, *map(str, folders)], env=clean_env(), capture_output=True, text=True, timeout=300
    )


def job_runs(client: MlflowClient) -> list:
    ids = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(ids)


LAUNCHERS = {"basic": [], "joblib": ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]}


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_a_sweep_survives_its_server_stopping_and_starting_again(workdir, launcher):
    backend = f"sqlite:///{workdir / 'server.db'}"
    port = free_port()
    artifacts = ["--artifacts-destination", str(workdir / "artifacts")]
    with mlflow_server(backend, *artifacts, cwd=workdir, port=port) as url:
        sweep = start_ffbench(
            workdir,
            "-m",
            "algo=ff,bp",
            "trainer.seed=0,1",
            f"tracking.uri={url}",
            *JOB,
            *LAUNCHERS[launcher],
        )
        wait_for_epoch(sweep, workdir, 3, logs="outputs/multirun/*/*/0/ffbench.log")

    # the server is down: the first job trains on, offline, to its last epoch, then waits for it
    def first_job_done_offline() -> bool:
        log = "".join(p.read_text() for p in workdir.glob("outputs/multirun/*/*/0/ffbench.log"))
        return "does not answer" in log and f" epoch {EPOCHS} " in log

    wait_for(first_job_done_offline, sweep, "last epoch of the first job, offline")
    with mlflow_server(backend, *artifacts, cwd=workdir, port=port):
        _, stderr = sweep.communicate(timeout=600)
        assert sweep.returncode == 0, stderr[-3000:]
        client = MlflowClient(url)
        runs = job_runs(client)
        [parent] = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
        jobs = [r for r in runs if r is not parent]
        assert len(jobs) == 4 and {r.info.status for r in jobs} == {"FINISHED"}
        assert parent.info.status == "FINISHED" and parent.data.metrics["jobs_finished"] == 4
        sweep_dir = Path(parent.data.tags["ffbench.sweep_dir"])
        logs = "".join(p.read_text() for p in sweep_dir.glob("*/ffbench.log"))
        assert "does not answer" in logs and "is back" in logs  # the jobs did go offline
        for job in jobs:
            folder = Path(job.data.tags["ffbench.output_dir"])
            assert stored_metrics(client, job.info.run_id) == journal_metrics(folder)
            assert len(journal_metrics(folder)["train_loss"]) == EPOCHS
            assert {a.path for a in client.list_artifacts(job.info.run_id)} >= {
                "config.yaml",
                "hydra",
            }

        again = sync(sweep_dir)  # everything is there: a sync adds nothing
        assert again.returncode == 0, again.stderr
        assert again.stdout.count("nothing added") == 4, again.stdout
        assert len(job_runs(client)) == 5


def test_a_job_whose_server_never_comes_back_is_recorded_by_sync_once(workdir):
    backend = f"sqlite:///{workdir / 'server.db'}"
    port = free_port()
    with mlflow_server(backend, cwd=workdir, port=port) as url:
        job = start_ffbench(workdir, f"tracking.uri={url}", "tracking.offline_wait_s=2", *JOB)
        wait_for_epoch(job, workdir, 3, logs="outputs/runs/*/*/ffbench.log")
    _, stderr = job.communicate(timeout=300)
    assert job.returncode == 1
    [folder] = Path(workdir, "outputs", "runs").glob("*/*")
    [line] = stderr.strip().splitlines()
    assert line.startswith("ffbench: error: the MLflow tracking server at") and line.endswith(
        f"run `ffbench-sync {folder}`"
    ), line

    with mlflow_server(backend, cwd=workdir, port=port) as url:
        client = MlflowClient(url)
        [before] = job_runs(client)  # created while the server was up, left RUNNING
        assert before.info.status == "RUNNING"
        first = sync(folder)
        assert first.returncode == 0, first.stderr
        [run] = job_runs(client)
        assert run.info.run_id == before.info.run_id and run.info.status == "FINISHED"
        assert stored_metrics(client, run.info.run_id) == journal_metrics(folder)
        assert len(journal_metrics(folder)["train_loss"]) == EPOCHS
        assert "test_accuracy" in run.data.metrics

        second = sync(folder, folder)  # again, the same folder given twice
        assert second.returncode == 0, second.stderr
        assert second.stdout.count("nothing added") == 1, second.stdout
        [run] = job_runs(client)
        assert stored_metrics(client, run.info.run_id) == journal_metrics(folder)


def test_a_sweep_whose_server_never_comes_back_is_closed_by_sync(workdir):
    backend = f"sqlite:///{workdir / 'server.db'}"
    port = free_port()
    with mlflow_server(backend, cwd=workdir, port=port) as url:
        sweep = start_ffbench(
            workdir, "-m", "algo=ff,bp", f"tracking.uri={url}", "tracking.offline_wait_s=2", *JOB
        )
        wait_for_epoch(sweep, workdir, 3, logs="outputs/multirun/*/*/0/ffbench.log")
    _, stderr = sweep.communicate(timeout=300)
    assert sweep.returncode == 1
    [sweep_dir] = Path(workdir, "outputs", "multirun").glob("*/*")
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("ffbench: error: the sweep's parent run") and last.endswith(
        f"run `ffbench-sync {sweep_dir}`"
    ), stderr[-3000:]
    assert "Traceback" not in stderr

    with mlflow_server(backend, cwd=workdir, port=port) as url:
        client = MlflowClient(url)
        assert len(job_runs(client)) == 2  # the parent and the first job; the second: none
        first = sync(sweep_dir)
        assert first.returncode == 0, first.stderr
        assert "run created" in first.stdout and "jobs counted again, FINISHED" in first.stdout
        runs = job_runs(client)
        [parent] = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
        jobs = [r for r in runs if r is not parent]
        assert len(jobs) == 2 and {r.info.status for r in jobs} == {"FINISHED"}
        assert parent.info.status == "FINISHED" and parent.data.metrics["jobs_finished"] == 2
        for job in jobs:
            assert job.data.tags["mlflow.parentRunId"] == parent.info.run_id
            folder = Path(job.data.tags["ffbench.output_dir"])
            assert stored_metrics(client, job.info.run_id) == journal_metrics(folder)

        second = sync(sweep_dir)
        assert second.stdout.count("nothing added") == 2
        assert "jobs counted again" not in second.stdout
        assert len(job_runs(client)) == 3
