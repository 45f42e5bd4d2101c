"""Sweeps beyond the basic launcher, through the installed `ffbench` command in real processes:
joblib workers and submitit's local executor writing to one SQLite store, a real `mlflow
server` as the tracking URI, one that is down, two sweeps started together, a bad sweep that
must write nothing, the SLURM launcher's documented settings, and the optuna sweeper."""

import multiprocessing
import shlex
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from helpers import (
    FFBENCH,
    QUICK,
    REPO,
    all_runs,
    clean_env,
    free_port,
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


def test_joblib_workers_write_every_job_to_one_sqlite_store(workdir):
    """8 jobs over 2 loky worker processes: 8 children of the one parent, none lost."""
    seeds = list(range(8))
    result = run_ffbench(
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
    # Two worker processes shared the jobs. (Not asserted through overlapping start and end
    # times: a run's open window is short next to a job's set-up, so two workers can take
    # turns without their runs ever overlapping.)
    processes = {
        r.data.tags["ffbench.process"]
        for r in all_runs(workdir)
        if "mlflow.parentRunId" in r.data.tags
    }
    assert len(processes) >= 2, processes


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


def test_slurm_settings_in_the_docs_compose(workdir):
    """docs/clusters.md's submitit_slurm commands give valid launcher configs: composed with
    --cfg, which takes no -m and so no swept keys (the cluster tests run them: test_slurm.py)."""
    readme = (REPO / "docs" / "clusters.md").read_text().replace("\\\n", " ")
    start = "ffbench -m hydra/launcher=submitit_slurm "
    lines = [s for s in readme.splitlines() if s.startswith(start)]
    assert len(lines) >= 2
    for line in lines:
        command = shlex.split(line.split("#")[0])
        settings = [arg for arg in command[2:] if "," not in arg]
        assert len(settings) < len(command) - 2  # it is a sweep
        result = run_ffbench(workdir, *settings, "--cfg", "hydra")
        assert result.returncode == 0, result.stderr
        launcher = yaml.safe_load(result.stdout)["hydra"]["launcher"]
        assert launcher["_target_"].endswith("submitit_launcher.SlurmLauncher")
        for key in ("partition", "timeout_min", "cpus_per_task"):
            if f"hydra.launcher.{key}=" in line:
                assert str(launcher[key]) in line, key
    assert not (workdir / "outputs").exists()


@pytest.mark.parametrize(
    "sweep, message",
    [
        ("algo=ff,nope", "Could not find 'algo/nope'"),
        ("trainer.nope=1,2", "Key 'nope' not in 'TrainerConfig'"),
        ("model.depth=1,0", "ffbench: error: model.depth must be positive (got 0)"),
    ],
)
def test_a_bad_sweep_fails_before_any_job_and_writes_nothing(workdir, sweep, message):
    """Every job is composed and checked up front: no store, no parent run, no sweep folder."""
    result = run_ffbench(workdir, "-m", sweep, *FAST, timeout=120)
    assert result.returncode != 0
    assert message in result.stderr
    assert "Launching" not in result.stdout + result.stderr  # no job started
    assert "Callback" not in result.stderr  # not Hydra's warning about a failed callback
    assert not (workdir / "outputs").exists()


@pytest.mark.parametrize("multirun", [False, True], ids=["run", "sweep"])
def test_unreachable_tracking_server_fails_in_seconds_with_one_line(workdir, multirun):
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    args = ["-m", "trainer.seed=0,1"] if multirun else []
    start = time.monotonic()
    result = run_ffbench(workdir, *args, *FAST, env=clean_env(MLFLOW_TRACKING_URI=uri), timeout=120)
    elapsed = time.monotonic() - start
    assert result.returncode == 1, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("ffbench: error: cannot reach the MLflow tracking server at")
    assert uri in lines[0] and "MLFLOW_TRACKING_URI" in lines[0]
    assert elapsed < 60, (
        f"took {elapsed:.0f} s"
    )  # start-up included; MLflow alone retries for minutes
    assert not (workdir / "outputs" / "mlflow.db").exists()
    assert not (workdir / "outputs" / "multirun").exists()


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


def _open_store_at(args) -> str:
    uri, start = args
    while time.time() < start:  # every process set up, then all at the same instant
        time.sleep(0.001)
    try:
        ready_store(uri)
        MlflowClient(uri).search_experiments()
    except Exception as err:
        return f"{type(err).__name__}: {err}"[:300]
    return "ok"


def test_a_new_sqlite_store_is_created_once_by_processes_starting_together(tmp_path):
    """Four processes open one new store at the same instant: MLflow alone lets them all
    create its tables and most fail ("table experiments already exists", "duplicate column
    name: step"); under ready_store's lock one creates them and the others find them."""
    uri = f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}"
    with multiprocessing.get_context("fork").Pool(4) as pool:
        outcomes = pool.map(_open_store_at, [(uri, time.time() + 1.5)] * 4)
    assert outcomes == ["ok"] * 4
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


def test_a_joblib_sweep_through_a_server_on_postgresql(workdir, tmp_path, postgres_uri):
    """A tracking server as a team runs it: `mlflow server` on a PostgreSQL database with its
    own artifact folder; 2 joblib workers record 4 jobs through it, read back over REST."""
    artifacts = tmp_path / "server-artifacts"
    serve = ["--artifacts-destination", str(artifacts)]
    with mlflow_server(postgres_uri, *serve, cwd=tmp_path) as uri:
        sweep = ["-m", "algo=ff,bp", "trainer.seed=0,1", *FAST, f"tracking.uri={uri}"]
        sweep += ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]
        result = run_ffbench(workdir, *sweep)
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
        workers = {tags_of(r)["ffbench.process"] for r in jobs}
        assert len(workers) == 2, workers
    # the runs live in PostgreSQL, the files in the server's folder: nothing local
    assert len(list(artifacts.glob("*/*/artifacts/config.yaml"))) == 4
    assert not (workdir / "outputs" / "mlflow.db").exists()


def tags_of(run: dict) -> dict:
    return {t["key"]: t["value"] for t in run["data"]["tags"]}


def test_optuna_sweeper_maximises_the_validation_accuracy(workdir):
    result = run_ffbench(
        workdir,
        "-m",
        "hydra/sweeper=optuna",
        "hydra.sweeper.direction=maximize",
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.sampler.seed=0",
        "optimizer.lr=interval(0.0001,0.01)",
        *FAST,
    )
    assert result.returncode == 0, result.stderr
    [results] = workdir.glob("outputs/multirun/*/*/optimization_results.yaml")
    best = yaml.safe_load(results.read_text())
    [parent], children = sweep_runs(all_runs(workdir))
    trials = children[parent.info.run_id]
    assert len(trials) == 2 and {r.info.status for r in trials} == {"FINISHED"}
    lrs = [float(r.data.params["optimizer.lr"]) for r in trials]
    assert all(1e-4 <= lr <= 1e-2 for lr in lrs) and lrs[0] != lrs[1]
    # the objective optuna saw is each job's validation accuracy, as recorded in MLflow
    accuracy = {
        float(r.data.params["optimizer.lr"]): r.data.metrics["val_accuracy"] for r in trials
    }
    assert best["best_value"] == pytest.approx(max(accuracy.values()))
    [lr] = [lr for lr in accuracy if lr == pytest.approx(best["best_params"]["optimizer.lr"])]
    assert accuracy[lr] == pytest.approx(best["best_value"])
