"""Sweeps of the app in this process, where no launcher starts a process: the optuna sweeper,
a bad sweep that must write nothing, a tracking server that does not answer, and the SLURM
launcher's documented settings, composed. Launchers in real processes (joblib, submitit),
real tracking servers and two sweeps at once are in tests/e2e/test_launchers.py."""

import shlex
import signal
import socket
import threading

import pytest
import yaml
from helpers import QUICK, REPO, all_runs, ffbench_here, in_a_finalizer

from ffbench import experiment


def sweep_runs(runs) -> tuple[list, dict]:
    """The parent runs, and each parent's children by parent run id."""
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = {p.info.run_id: [] for p in parents}
    for run in runs:
        if "mlflow.parentRunId" in run.data.tags:
            children[run.data.tags["mlflow.parentRunId"]].append(run)
    return parents, children


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
        result = ffbench_here(workdir, *settings, "--cfg", "hydra")
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
    result = ffbench_here(workdir, "-m", sweep, *QUICK)
    assert result.returncode != 0
    assert message in result.stderr
    assert "Launching" not in result.stdout + result.stderr  # no job started
    assert "Callback" not in result.stderr  # not Hydra's warning about a failed callback
    assert not (workdir / "outputs").exists()


@pytest.fixture
def hanging_up():
    """A port that accepts connections and closes each at once, counting them: a tracking
    server that does not answer, whose callers can be counted. Yields (URL, connections)."""
    listener = socket.create_server(("127.0.0.1", 0))
    connections = []

    def accept():
        while True:
            try:
                connection, _ = listener.accept()
            except OSError:  # closed: the test is over
                return
            connections.append(connection.getpeername())
            connection.close()

    threading.Thread(target=accept, daemon=True).start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}", connections
    listener.close()


@pytest.mark.parametrize("multirun", [False, True], ids=["run", "sweep"])
def test_a_tracking_server_that_does_not_answer_stops_at_once_with_one_line(
    workdir, hanging_up, multirun
):
    """One request, not MLflow's retries for minutes: then one line and exit 1, nothing written."""
    uri, connections = hanging_up
    args = ["-m", "trainer.seed=0,1"] if multirun else []
    result = ffbench_here(workdir, *args, *QUICK, env={"MLFLOW_TRACKING_URI": uri})
    assert result.returncode == 1, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("ffbench: error: cannot reach the MLflow tracking server at")
    assert uri in lines[0] and "MLFLOW_TRACKING_URI" in lines[0]
    assert len(connections) == 1
    assert not (workdir / "outputs" / "mlflow.db").exists()
    assert not (workdir / "outputs" / "multirun").exists()


def test_optuna_sweeper_maximises_the_validation_accuracy(launch):
    result = ffbench_here(
        launch,
        "-m",
        "hydra/sweeper=optuna",
        "hydra.sweeper.direction=maximize",
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.sampler.seed=0",
        "optimizer.lr=interval(0.0001,0.01)",
        *QUICK,
    )
    assert result.returncode == 0, result.stderr
    [results] = launch.glob("outputs/multirun/*/*/optimization_results.yaml")
    best = yaml.safe_load(results.read_text())
    [parent], children = sweep_runs(all_runs(launch))
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


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_stop_dropped_after_a_jobs_last_step_ends_the_sweep_with_that_job(launch, monkeypatch):
    """A SIGTERM that Python dropped after the job's last check (in a finalizer, during the
    final test) is acted on when the job ends: its run, complete, stays FINISHED, and the
    sweep's next job never starts; the parent counts the job it lacks."""
    final_metrics = experiment.final_metrics

    def stopped_in_the_final_test(*args):
        metrics = final_metrics(*args)
        in_a_finalizer(signal.SIGTERM)  # printed and dropped: no step or chunk checks again
        return metrics

    monkeypatch.setattr(experiment, "final_metrics", stopped_in_the_final_test)
    with pytest.raises(KeyboardInterrupt, match="stopped by signal SIGTERM"):
        ffbench_here(launch, "-m", "trainer.seed=0,1", *QUICK)
    [parent], children = sweep_runs(all_runs(launch))
    [job] = children[parent.info.run_id]
    assert job.info.status == "FINISHED"
    assert job.data.params["trainer.seed"] == "0" and "test_accuracy" in job.data.metrics
    assert parent.info.status == "FAILED"
    assert parent.data.metrics["jobs_missing"] == 1
