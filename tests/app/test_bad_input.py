"""Bad input: a clear error, a non-zero exit, and no lost, corrupt or RUNNING MLflow records
(the app in this process; the same through the installed command, its exit status and its
stderr: tests/e2e/test_cli.py)."""

import pytest
from helpers import QUICK, all_runs, ffbench_here, write_md5sums

# Without normalisation between layers, a huge SGD step makes activities overflow to NaN.
DIVERGE = ["model.norm=none", "optimizer=sgd"]


def _error_lines(stderr: str) -> list[str]:
    """What the user reads, without Hydra's hint about HYDRA_FULL_ERROR."""
    return [line for line in stderr.splitlines() if line.strip() and "HYDRA_FULL_ERROR" not in line]


def test_unknown_option_names_the_valid_choices(workdir):
    result = ffbench_here(workdir, "algo=nope")
    assert result.returncode != 0
    assert "Could not find 'algo/nope'" in result.stderr
    assert "bp" in result.stderr and "ff" in result.stderr  # Hydra lists the options
    assert not (workdir / "outputs" / "mlflow.db").exists()


@pytest.mark.parametrize(
    "override, message",
    [
        ("model.widht=3", "Key 'widht' not in 'ModelConfig'"),
        ("trainer.epochs=ten", "Value 'ten' of type 'str' could not be converted to Integer"),
    ],
)
def test_misspelt_key_or_wrong_type_is_rejected_by_the_schema(workdir, override, message):
    result = ffbench_here(workdir, override)
    assert result.returncode != 0
    assert message in result.stderr
    assert all_runs(workdir) == []


@pytest.mark.parametrize(
    "override, message",
    [
        ("trainer.epochs=0", "trainer.epochs must be positive (got 0)"),
        ("model.depth=0", "model.depth must be positive (got 0)"),
        ("optimizer.lr=-0.1", "optimizer.lr must be positive (got -0.1)"),
        (
            "trainer.batch_size=100000",
            "trainer.batch_size=100000 exceeds the 1257 training examples",
        ),
        ("model.norm=batch", "model.norm=batch is not supported: choose one of"),
        ("trainer.device=tpu", "trainer.device=tpu is not supported"),
    ],
)
def test_invalid_values_fail_before_training_with_one_line(workdir, override, message):
    result = ffbench_here(workdir, override)
    assert result.returncode != 0
    [line] = _error_lines(result.stderr)
    assert message in line
    assert all_runs(workdir) == []


def test_missing_mnist_offline_says_which_files_go_where(workdir, tmp_path):
    offline = "dataset.mirror=http://127.0.0.1:9/"  # nothing listens there: as if offline
    result = ffbench_here(workdir, "dataset=mnist", f"dataset.root={tmp_path / 'nowhere'}", offline)
    assert result.returncode != 0
    [line] = _error_lines(result.stderr)
    assert "could not be downloaded" in line and "t10k-labels-idx1-ubyte.gz" in line
    assert f"into {tmp_path / 'nowhere' / 'mnist'}" in line
    assert "dataset.root=" in line and "FFBENCH_DATA" in line
    assert not (tmp_path / "nowhere").exists()
    # and with neither dataset.root nor FFBENCH_DATA: the user's cache folder
    env = {"XDG_CACHE_HOME": str(tmp_path / "xdg")}
    result = ffbench_here(workdir, "dataset=mnist", offline, env=env)
    [line] = _error_lines(result.stderr)
    assert f"into {tmp_path / 'xdg' / 'ffbench' / 'mnist'}" in line and "dataset.root=" in line
    assert all_runs(workdir) == []


def test_truncated_mnist_file_is_named(workdir, mnist_dir, tmp_path):
    sums = tmp_path / "md5sums"  # generated files: their own checksums, not MNIST's
    write_md5sums(mnist_dir, sums)
    victim = mnist_dir / "train-images-idx3-ubyte.gz"
    victim.write_bytes(victim.read_bytes()[:-200])
    result = ffbench_here(
        workdir, "dataset=mnist", f"dataset.root={mnist_dir}", f"dataset.checksums={sums}"
    )
    assert result.returncode != 0
    [line] = _error_lines(result.stderr)
    assert str(victim) in line and "fails its checksum" in line and "truncated" in line
    assert all_runs(workdir) == []


def test_truncated_raw_idx_file_is_named(workdir, mnist_dir, tmp_path):
    for gz in mnist_dir.glob("*.gz"):  # the same files, uncompressed
        import gzip

        gz.with_suffix("").write_bytes(gzip.decompress(gz.read_bytes()))
        gz.unlink()
    sums = tmp_path / "md5sums"
    write_md5sums(mnist_dir, sums)
    victim = mnist_dir / "t10k-labels-idx1-ubyte"
    victim.write_bytes(victim.read_bytes()[:-10])
    env = {"FFBENCH_DATA": str(mnist_dir)}
    overrides = ["dataset=mnist", "dataset.val_size=50", f"dataset.checksums={sums}"]
    result = ffbench_here(workdir, *overrides, env=env)
    assert result.returncode != 0
    [line] = _error_lines(result.stderr)
    assert str(victim) in line and "fails its checksum" in line


@pytest.mark.parametrize("algo", ["ff", "bp"])
def test_nan_loss_stops_the_run_and_marks_it_failed(launch, algo):
    result = ffbench_here(launch, f"algo={algo}", *DIVERGE, "optimizer.lr=1e10", *QUICK)
    assert result.returncode != 0
    [line] = _error_lines(result.stderr)
    assert "training diverged" in line and "lower optimizer.lr" in line
    [run] = all_runs(launch)
    assert run.info.status == "FAILED"
    assert "training diverged" in run.data.tags["ffbench.error"]


def test_failed_job_in_a_sweep_leaves_the_others_finished_and_nothing_running(launch):
    result = ffbench_here(launch, "-m", *DIVERGE, "optimizer.lr=1e10,0.01", *QUICK)
    assert result.returncode != 0
    runs = all_runs(launch)
    statuses = sorted((r.data.params.get("optimizer.lr", "parent"), r.info.status) for r in runs)
    assert statuses == [("0.01", "FINISHED"), ("10000000000.0", "FAILED"), ("parent", "FAILED")]
