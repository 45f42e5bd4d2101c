"""The installed `ffbench` command where its process is what is tested: a non-editable install
finds its configs, `make ui` serves what a run recorded, Ctrl-C and SIGTERM end a run KILLED.
Runs, sweeps and what MLflow holds for them are in tests/app/test_runs.py (the same app, in the
test process)."""

import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import (
    FFBENCH,
    QUICK,
    REPO,
    all_runs,
    clean_env,
    ffbench_here,
    free_port,
    rest,
    run_ffbench,
    serving,
    store,
    wait_for_epoch,
)


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


@pytest.mark.slow  # 19 s: `make test-slow` and CI; make test serves a sweep in tests/e2e/test_ui.py
def test_make_ui_serves_the_recorded_runs(workdir):
    """`make ui` starts a real MLflow server on 127.0.0.1 that shows what ffbench recorded."""
    assert ffbench_here(workdir, *QUICK).returncode == 0
    port = free_port()
    db = workdir / "outputs" / "mlflow.db"
    command = ["make", "-s", "-C", REPO, "ui", f"STORE={db}", f"UI_PORT={port}"]
    with serving(command, port, timeout=90) as url:
        experiment = rest(url, "experiments/get-by-name", experiment_name="ffbench")["experiment"]
        runs = rest(url, "runs/search", {"experiment_ids": [experiment["experiment_id"]]})["runs"]
    assert [run["info"]["status"] for run in runs] == ["FINISHED"]
    assert runs[0]["info"]["run_name"] == "ff-sumsq-relu-digits"


# SIGTERM (a scheduler's stop) is `make test-slow` and CI, 8 s; SIGINT is in make test
@pytest.mark.parametrize(
    "signum", [signal.SIGINT, pytest.param(signal.SIGTERM, marks=pytest.mark.slow)]
)
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
        # two finished epochs in the job's log: they are in MLflow by then
        wait_for_epoch(process, workdir, 2, logs="outputs/runs/*/*/ffbench.log")
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


@pytest.mark.parametrize(
    "override, message",
    [
        ("model.widht=3", "Key 'widht' not in 'ModelConfig'"),  # Hydra's error, then its exit
        ("trainer.epochs=0", "ffbench: error: trainer.epochs must be positive (got 0)"),  # ours
    ],
)
def test_bad_input_exits_1_with_its_message_and_records_nothing(workdir, override, message):
    """The process's exit status and stderr, for an error of Hydra's and one of ffbench's; every
    kind of bad input is in tests/app/test_bad_input.py."""
    result = run_ffbench(workdir, override)
    assert result.returncode == 1
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert not (workdir / "outputs" / "mlflow.db").exists()
