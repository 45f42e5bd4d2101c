"""Runs on generated CIFAR-10 files (the app in this process): FF from a prepared folder, BP
downloading the tarball from a mirror (an HTTP server on a thread of the test process)."""

import pytest
from helpers import all_runs, ffbench_here, leftovers, make_cifar, md5, write_md5sums


@pytest.mark.parametrize("algo", ["ff", "bp"])
def test_cifar10_runs_end_to_end(launch, tmp_path, mirror, algo):
    made = tmp_path / "made"
    make_cifar(made)
    sums = write_md5sums(made / "cifar-10-batches-py", tmp_path / "sums.md5")
    tarball = (made / "cifar-10-python.tar.gz").read_bytes()
    (tmp_path / "sums.md5").write_text(sums + f"{md5(tarball)}  cifar-10-python.tar.gz\n")
    # FF reads the prepared folder; BP downloads the tarball from the mirror into its cache
    where = [f"dataset.root={made}"]
    if algo == "bp":
        mirror.files = {"cifar-10-python.tar.gz": tarball}
        where = [f"dataset.root={tmp_path / 'cache'}", f"dataset.mirror={mirror.url}"]
    result = ffbench_here(
        launch,
        f"algo={algo}",
        "dataset=cifar10",
        *where,
        f"dataset.checksums={tmp_path / 'sums.md5'}",
        "dataset.val_size=20",
        "trainer.epochs=1",
        "model.width=32",
        "trainer.batch_size=20",
        "trainer.num_threads=1",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    [run] = all_runs(launch)
    assert run.info.status == "FINISHED" and run.data.params["dataset"] == "cifar10"
    # the images reach the net with their own labels: one epoch learns the generated classes
    # (measured: BP 0.80 test accuracy, FF's read-out 0.50; chance is 0.1)
    learnt = run.data.metrics["test_accuracy_readout" if algo == "ff" else "test_accuracy"]
    assert learnt > 0.3, run.data.metrics
    if algo == "bp":
        assert mirror.hits == ["cifar-10-python.tar.gz"]
        assert leftovers(tmp_path / "cache") == sorted(["cifar10", "cifar-10-python.tar.gz"])
