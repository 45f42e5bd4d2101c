"""Sweeps beyond the basic launcher, through the installed `ffbench` command in real processes:
joblib workers and submitit's local executor writing to one SQLite store, a real `mlflow
server` as the tracking URI (on SQLite, and on PostgreSQL), two sweeps started together on a
new store. What needs no process of its own (the optuna sweeper, a bad sweep, a server that
does not answer, the SLURM launcher's documented settings) is in tests/app/test_sweeps.py."""

import multiprocessing
import subprocess
import urllib.request
from pathlib import Path

import pytest
from helpers import (
    FFBENCH,
    QUICK,
    all_runs,
    clean_env,
    mlflow_server,
    rest,
    run_ffbench,
)
from mlflow.tracking import MlflowClient

from ffbench.store import ready_store

# One torch thread per job: jobs side by side on a busy 2-core machine, each with a thread
# per core, spend seconds per epoch spinning instead of milliseconds.
FAST = QUICK
TROUBLE = ("database is locked", "duplicate column", "already exists", "Traceback")


def sweep_runs(runs) -> tuple[list, dict]:
    """The parent runs, and each parent's children by parent run id."""
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = {p.info.run_id: [] for p in parents}
    for run in runs:
        if "mlflow.parentRunId" in run.data.tags:
            children[run.data.tags["mlflow.parentRunId"]].append(run)
    return parents, children


def all_text(workdir: Path, *results) -> str:
    """What the processes printed and what every job wrote to its own logs."""
    logs = [p.read_text(errors="replace") for p in workdir.glob("outputs/**/*.log")]
    logs += [p.read_text(errors="replace") for p in workdir.glob("outputs/**/.submitit/*/*.err")]
    return "\n".join([*(r.stdout + r.stderr for r in results), *logs])


def assert_one_finished_sweep(workdir: Path, seeds: list[int]) -> None:
    """One parent FINISHED holding one FINISHED child per seed, each job numbered once."""
    [parent], children = sweep_runs(all_runs(workdir))
    jobs = children[parent.info.run_id]
    assert sorted(int(r.data.params["trainer.seed"]) for r in jobs) == seeds
    assert {r.info.status for r in jobs} == {"FINISHED"}
    assert sorted(int(r.data.tags["ffbench.job_num"]) for r in jobs) == list(range(len(seeds)))
    assert all("test_accuracy" in r.data.metrics for r in jobs)
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics["jobs_finished"] == len(seeds)


def run_sweep(cwd: Path, *args: str, env: dict | None = None) -> tuple:
    """The installed command, as run_ffbench runs it; (its CompletedProcess, its process id)."""
    process = subprocess.Popen(
        [FFBENCH, *args],
        cwd=cwd,
        env=env or clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=400)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return subprocess.CompletedProcess(
        process.args, process.returncode, stdout, stderr
    ), process.pid


def worker_pids(runs) -> set[int]:
    """The process ids that ran these job runs (tag ffbench.process, host:pid)."""
    return {int(run.data.tags["ffbench.process"].rsplit(":", 1)[1]) for run in runs}


@pytest.mark.slow  # 19 s of CPU: `make test-slow` and CI
def test_joblib_workers_write_every_job_to_one_sqlite_store(workdir):
    """4 jobs over 2 loky worker processes: 4 children of the one parent, none lost."""
    seeds = list(range(4))
    result, pid = run_sweep(
        workdir,
        "-m",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        f"trainer.seed={','.join(map(str, seeds))}",
        *FAST,
    )
    assert result.returncode == 0, result.stderr
    assert "Joblib.Parallel(n_jobs=2" in result.stdout + result.stderr  # Hydra's launcher line
    text = all_text(workdir, result)
    assert not [t for t in TROUBLE if t in text], text[-3000:]
    assert_one_finished_sweep(workdir, seeds)
    # The jobs ran in joblib's worker processes, at most n_jobs of them, none in the sweep's
    # own. (How many workers got a job is the scheduler's business: one may take them all.)
    workers = worker_pids(r for r in all_runs(workdir) if "mlflow.parentRunId" in r.data.tags)
    assert 1 <= len(workers) <= 2 and pid not in workers, (pid, workers)


@pytest.mark.slow  # 20 s of CPU: `make test-slow` and CI; SLURM's submitit is `make test-cluster`
def test_submitit_local_jobs_are_separate_processes_under_one_parent(workdir):
    result = run_ffbench(
        workdir, "-m", "hydra/launcher=submitit_local", "trainer.seed=0,1", *FAST, timeout=400
    )
    assert result.returncode == 0, result.stderr
    text = all_text(workdir, result)
    assert not [t for t in TROUBLE if t in text], text[-3000:]
    assert_one_finished_sweep(workdir, [0, 1])
    # submitit gave each job a process (and a folder) of its own
    assert len(list(workdir.glob("outputs/multirun/*/*/.submitit/*/*_result.pkl"))) == 2


@pytest.mark.slow  # 13 s of CPU: `make test-slow` and CI; the store's lock is checked below
def test_two_sweeps_started_together_on_a_new_store_record_all_their_runs(workdir):
    """Both create the SQLite store at once (its tables are made under a lock) and write to it."""
    env = clean_env()
    sweeps = [
        subprocess.Popen(
            [FFBENCH, "-m", f"trainer.seed={seeds}", *FAST],
            cwd=workdir,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for seeds in ("0,1", "2,3")
    ]
    results = []
    try:
        for process in sweeps:
            stdout, stderr = process.communicate(timeout=400)
            results.append(
                subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
            )
    finally:
        for process in sweeps:
            if process.poll() is None:
                process.kill()
                process.wait()
    for result in results:
        assert result.returncode == 0, result.stderr
    text = all_text(workdir, *results)
    assert not [t for t in TROUBLE if t in text], text[-3000:]
    parents, children = sweep_runs(all_runs(workdir))
    assert len(parents) == 2
    assert sorted(
        sorted(int(r.data.params["trainer.seed"]) for r in children[p.info.run_id]) for p in parents
    ) == [[0, 1], [2, 3]]
    assert {r.info.status for r in all_runs(workdir)} == {"FINISHED"}


def _open_store_together(uri: str, barrier, outcomes) -> None:
    barrier.wait()  # every process set up, then all at once
    try:
        ready_store(uri)
        MlflowClient(uri).search_experiments()
    except Exception as err:
        outcomes.put(f"{type(err).__name__}: {err}"[:300])
    else:
        outcomes.put("ok")


def test_a_new_sqlite_store_is_created_once_by_processes_starting_together(tmp_path):
    """Four processes open one new store at the same instant: MLflow alone lets them all
    create its tables and most fail ("table experiments already exists", "duplicate column
    name: step"); under ready_store's lock one creates them and the others find them."""
    uri = f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}"
    fork = multiprocessing.get_context("fork")
    barrier, outcomes = fork.Barrier(4), fork.Queue()
    processes = [
        fork.Process(target=_open_store_together, args=(uri, barrier, outcomes)) for _ in range(4)
    ]
    for process in processes:
        process.start()
    try:
        found = [outcomes.get(timeout=300) for _ in processes]
    finally:
        for process in processes:
            process.join(timeout=60)
            if process.is_alive():
                process.kill()
    assert found == ["ok"] * 4
    assert (tmp_path / "outputs" / "mlflow.db.lock").exists()


@pytest.fixture
def tracking_server(tmp_path):
    """A real `mlflow server` on 127.0.0.1 with its own SQLite backend and artifact folder."""
    artifacts = tmp_path / "server-artifacts"
    backend = f"sqlite:///{tmp_path / 'server.db'}"
    with mlflow_server(backend, "--artifacts-destination", str(artifacts), cwd=tmp_path) as uri:
        yield uri, artifacts


def test_runs_and_a_sweep_log_to_a_remote_tracking_server(workdir, tracking_server):
    uri, artifacts = tracking_server
    env = clean_env(MLFLOW_TRACKING_URI=uri)
    single = run_ffbench(workdir, "algo=bp", *FAST, env=env)
    assert single.returncode == 0, single.stderr
    sweep = run_ffbench(workdir, "-m", "trainer.seed=0,1", *FAST, env=env)
    assert sweep.returncode == 0, sweep.stderr
    assert not (workdir / "outputs" / "mlflow.db").exists()  # nothing went to a local store

    client = MlflowClient(uri)  # everything read back over the server's REST API
    experiment = client.get_experiment_by_name("ffbench")
    assert experiment.artifact_location.startswith("mlflow-artifacts:")  # served by the server
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 4 and {r.info.status for r in runs} == {"FINISHED"}
    parents, children = sweep_runs(runs)
    [lone] = [p for p in parents if not children[p.info.run_id]]
    [parent] = [p for p in parents if children[p.info.run_id]]
    assert lone.data.params["algo"] == "bp"
    assert sorted(r.data.params["trainer.seed"] for r in children[parent.info.run_id]) == [
        "0",
        "1",
    ]
    assert parent.data.metrics["jobs_finished"] == 2
    for run in [lone, *children[parent.info.run_id]]:
        assert {"test_accuracy", "val_accuracy", "peak_rss_mb"} <= run.data.metrics.keys()
        history = client.get_metric_history(run.info.run_id, "val_accuracy")
        assert [m.step for m in history] == [1, 2]
        assert {"config.yaml", "hydra"} <= {a.path for a in client.list_artifacts(run.info.run_id)}
        config = client.download_artifacts(run.info.run_id, "config.yaml", str(workdir))
        assert "epochs: 2" in Path(config).read_text()
    # the server stored the artifacts in its --artifacts-destination
    assert len(list(artifacts.glob("*/*/artifacts/config.yaml"))) == 3
    # and its REST API answers a plain HTTP client too
    answer = rest(uri, "runs/search", {"experiment_ids": [experiment.experiment_id]})
    assert len(answer["runs"]) == 4


@pytest.mark.slow  # half a minute: `make test-slow` and CI; a server on SQLite is in make test
def test_a_joblib_sweep_through_a_server_on_postgresql(workdir, tmp_path, postgres_uri):
    """A tracking server as a team runs it: `mlflow server` on a PostgreSQL database with its
    own artifact folder; 2 joblib workers record 4 jobs through it, read back over REST."""
    artifacts = tmp_path / "server-artifacts"
    serve = ["--artifacts-destination", str(artifacts)]
    with mlflow_server(postgres_uri, *serve, cwd=tmp_path) as uri:
        sweep = ["-m", "algo=ff,bp", "trainer.seed=0,1", *FAST, f"tracking.uri={uri}"]
        sweep += ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]
        result, pid = run_sweep(workdir, *sweep)
        assert result.returncode == 0, result.stderr[-3000:]
        experiment = rest(uri, "experiments/get-by-name", experiment_name="ffbench")
        eid = experiment["experiment"]["experiment_id"]
        runs = rest(uri, "runs/search", {"experiment_ids": [eid]})["runs"]
        assert len(runs) == 5 and {r["info"]["status"] for r in runs} == {"FINISHED"}
        [parent] = [r for r in runs if r["info"]["run_name"].startswith("sweep-")]
        jobs = [r for r in runs if r is not parent]
        for run in jobs:
            run_id = run["info"]["run_id"]
            assert tags_of(run)["mlflow.parentRunId"] == parent["info"]["run_id"]
            history = rest(uri, "metrics/get-history", run_id=run_id, metric_key="train_loss")
            assert sorted(m["step"] for m in history["metrics"]) == [1, 2]
            listed = rest(uri, "artifacts/list", run_id=run_id)["files"]
            assert {"config.yaml", "hydra"} <= {f["path"] for f in listed}
            address = f"{uri}/get-artifact?run_id={run_id}&path=config.yaml"
            with urllib.request.urlopen(address, timeout=30) as answer:
                assert "epochs: 2" in answer.read().decode()
        workers = {int(tags_of(r)["ffbench.process"].rsplit(":", 1)[1]) for r in jobs}
        assert 1 <= len(workers) <= 2 and pid not in workers, (pid, workers)
    # the runs live in PostgreSQL, the files in the server's folder: nothing local
    assert len(list(artifacts.glob("*/*/artifacts/config.yaml"))) == 4
    assert not (workdir / "outputs" / "mlflow.db").exists()


def tags_of(run: dict) -> dict:
    return {t["key"]: t["value"] for t in run["data"]["tags"]}
