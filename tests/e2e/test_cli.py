"""End to end through the installed `ffbench` command: runs, sweeps, and what MLflow holds."""

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import (
    FFBENCH,
    QUICK,
    REPO,
    all_runs,
    clean_env,
    free_port,
    rest,
    run_ffbench,
    serving,
    store,
)

from ffbench.config import options_text

FINAL_METRICS = {
    "test_accuracy",
    "val_accuracy",
    "train_accuracy",
    "wall_time_s",
    "train_time_s",
    "peak_rss_mb",
    "samples_per_s",
}
GROUPS = {"algo", "dataset", "model", "goodness", "activation", "optimizer"}


@pytest.mark.parametrize("algo", ["ff", "bp"])
def test_default_run_reaches_90_percent_and_records_everything(workdir, algo):
    """`ffbench algo=X` with the shipped defaults, launched outside the repository."""
    result = run_ffbench(workdir, f"algo={algo}")
    assert result.returncode == 0, result.stderr
    [run] = all_runs(workdir)
    assert run.info.status == "FINISHED"
    metrics, params, tags = run.data.metrics, run.data.params, run.data.tags
    assert FINAL_METRICS <= metrics.keys()
    assert metrics["test_accuracy"] >= 0.90, metrics
    for name in ("test_accuracy", "val_accuracy", "train_accuracy"):
        assert 0.0 <= metrics[name] <= 1.0
    assert 0 < metrics["train_time_s"] < metrics["wall_time_s"]
    assert metrics["peak_rss_mb"] > 50  # torch alone takes more than that
    assert metrics["samples_per_s"] > 0
    # the flattened resolved config, plus one param and one tag per group choice
    assert params["model.depth"] == "2" and params["trainer.epochs"] == "50"
    assert params["algo.name"] == algo
    assert {k: params[k] for k in GROUPS} == {k: tags[k] for k in GROUPS}
    assert params["algo"] == algo and params["dataset"] == "digits"
    expected_name = "ff-sumsq-relu-digits" if algo == "ff" else "bp-relu-digits"
    assert run.info.run_name == expected_name
    # per-epoch history, one point per epoch
    client = store(workdir)
    history = client.get_metric_history(run.info.run_id, "val_accuracy")
    assert [m.step for m in history] == list(range(1, 51))
    assert len(client.get_metric_history(run.info.run_id, "epoch_time_s")) == 50
    if algo == "ff":
        for layer in (0, 1):
            assert len(client.get_metric_history(run.info.run_id, f"layer{layer}_loss")) == 50
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "hydra"} <= artifacts
    hydra_files = {a.path for a in client.list_artifacts(run.info.run_id, "hydra")}
    assert {"hydra/config.yaml", "hydra/overrides.yaml", "hydra/hydra.yaml"} <= hydra_files
    # the store and Hydra's folders sit under the launch directory's outputs/
    assert (workdir / "outputs" / "mlflow.db").is_file()
    assert list((workdir / "outputs" / "runs").glob("*/*/.hydra/config.yaml"))
    assert not (workdir / "mlruns").exists()
    assert "test acc" in result.stdout  # the rich summary table


def test_multirun_gives_one_parent_and_two_children(workdir):
    result = run_ffbench(workdir, "-m", "algo=ff,bp", *QUICK)
    assert result.returncode == 0, result.stderr
    runs = all_runs(workdir)
    assert len(runs) == 3
    [parent] = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(r.data.params["algo"] for r in children) == ["bp", "ff"]
    assert {r.info.status for r in runs} == {"FINISHED"}
    assert parent.data.metrics["jobs_finished"] == 2
    assert sorted(r.data.tags["ffbench.job_num"] for r in children) == ["0", "1"]
    assert list((workdir / "outputs" / "multirun").glob("*/*/1/.hydra"))


def test_ff_options_sweep_and_are_logged_as_params(workdir):
    sweep = ["goodness=split,meansq", "goodness.inverted=true", "algo.loss=symba"]
    result = run_ffbench(workdir, "-m", *sweep, "algo.evaluation=readout", *QUICK)
    assert result.returncode == 0, result.stderr
    children = [r for r in all_runs(workdir) if "mlflow.parentRunId" in r.data.tags]
    assert sorted(r.data.params["goodness"] for r in children) == ["meansq", "split"]
    for run in children:
        assert run.info.status == "FINISHED"
        assert run.data.params["goodness.inverted"] == "True"
        assert run.data.params["algo.loss"] == "symba"
        metrics = run.data.metrics
        assert metrics["test_accuracy"] == metrics["test_accuracy_readout"]
        assert "test_accuracy_goodness" in metrics and "val_accuracy_goodness" in metrics


def test_environment_overrides_store_and_experiment(workdir, tmp_path):
    db = tmp_path / "elsewhere.db"
    env = clean_env(MLFLOW_TRACKING_URI=f"sqlite:///{db}", MLFLOW_EXPERIMENT_NAME="mine")
    result = run_ffbench(workdir, *QUICK, env=env)
    assert result.returncode == 0, result.stderr
    assert not (workdir / "outputs" / "mlflow.db").exists()
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{db}")
    experiment = client.get_experiment_by_name("mine")
    [run] = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"


def test_help_lists_every_group_and_the_schema_s_keys(workdir):
    """Groups from the registries; the key table is the schema's, generated (options_text)."""
    result = run_ffbench(workdir, "--help")
    assert result.returncode == 0
    assert options_text() in result.stdout
    assert "  model.kernel = 5  [positive]" in result.stdout
    for line in (
        "algo: bp, bp_ckpt, ff",
        "dataset: cifar10, digits, fashion_mnist, kmnist, mnist",
        "model: conv, local, mlp",
    ):
        assert line in result.stdout
    assert "goodness: meansq, split, sumabs, sumsq" in result.stdout
    assert "activation: " in result.stdout and "optimizer: adam, sgd" in result.stdout
    assert (
        "experiment: cifar10_conv, cifar10_conv_bp, cifar10_local, fashion_mnist_conv, "
        "fashion_mnist_conv_bp, hinton_mnist, hinton_mnist_bf16, hinton_mnist_bp, memory_depth, "
        "mnist_conv, "
        "mnist_conv_bp, quick_mnist, unsupervised_mnist"
    ) in result.stdout


def test_non_editable_install_finds_its_configs(workdir, tmp_path):
    """`pip install .` (not -e) into a fresh venv: its console script runs from elsewhere."""
    source = tmp_path / "source"  # a clean copy, so the build leaves nothing in the checkout
    source.mkdir()
    for part in ("pyproject.toml", "README.md", "ffbench", "conf"):
        copy = shutil.copytree if (REPO / part).is_dir() else shutil.copy
        copy(REPO / part, source / part)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = next((venv / "lib").glob("python*/site-packages"))
    # Borrow the dependencies of the test environment without its editable ffbench: paths
    # listed in a .pth file are added to sys.path, but their own .pth files are not run.
    deps = next(p for p in map(Path, sys.path) if (p / "mlflow").is_dir())
    (site / "deps.pth").write_text(f"{deps}\n")
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install"]
        + ["-q", "--no-deps", "--no-build-isolation", str(source)],
        check=True,
        capture_output=True,
    )
    probe = subprocess.run(
        [venv / "bin" / "python", "-c", "import ffbench.conf; print(ffbench.conf.__file__)"],
        capture_output=True,
        text=True,
        check=True,
        cwd=workdir,
    )
    assert probe.stdout.startswith(str(site))  # the installed copy, not the checkout
    result = run_ffbench(workdir, *QUICK, exe=str(venv / "bin" / "ffbench"))
    assert result.returncode == 0, result.stderr
    [run] = all_runs(workdir)
    assert run.info.status == "FINISHED"


def test_make_ui_serves_the_recorded_runs(workdir):
    """`make ui` starts a real MLflow server on 127.0.0.1 that shows what ffbench recorded."""
    assert run_ffbench(workdir, *QUICK).returncode == 0
    port = free_port()
    db = workdir / "outputs" / "mlflow.db"
    command = ["make", "-s", "-C", REPO, "ui", f"STORE={db}", f"UI_PORT={port}"]
    with serving(command, port, timeout=90) as url:
        experiment = rest(url, "experiments/get-by-name", experiment_name="ffbench")["experiment"]
        runs = rest(url, "runs/search", {"experiment_ids": [experiment["experiment_id"]]})["runs"]
    assert [run["info"]["status"] for run in runs] == ["FINISHED"]
    assert runs[0]["info"]["run_name"] == "ff-sumsq-relu-digits"


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_run_is_killed_with_its_epochs_kept(workdir, signum):
    """Ctrl-C or SIGTERM in mid-training: the run ends KILLED, never RUNNING."""
    process = subprocess.Popen(
        [FFBENCH, "trainer.epochs=100000", "model.width=32"],
        cwd=workdir,
        env=clean_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        # wait for the job's log to show two finished epochs (they are in MLflow by then); the
        # store itself is left alone while the job may still be creating it
        logs = workdir / "outputs" / "runs"
        while not any("epoch 2 " in p.read_text() for p in logs.glob("*/*/ffbench.log")):
            assert time.monotonic() < deadline, "no epoch was logged within 120 s"
            time.sleep(0.5)
        process.send_signal(signum)
        _, stderr = process.communicate(timeout=60)
        assert process.returncode != 0
    finally:
        if process.poll() is None:  # never leave a training process behind
            process.kill()
            process.wait()
    [run] = all_runs(workdir)
    assert run.info.status == "KILLED", stderr
    assert len(store(workdir).get_metric_history(run.info.run_id, "val_accuracy")) >= 2
    assert run.data.tags["ffbench.error"].startswith(("stopped by signal", "KeyboardInterrupt"))
