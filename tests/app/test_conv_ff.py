"""FF on conv nets end to end: a conv net learns the digits with each way of giving it the
label, and the conv presets, FF and their BP twins, run on generated files in the real MNIST
and CIFAR-10 formats (whole jobs and sweeps of the app, in this process). The pieces are
in tests/unit/test_conv_ff.py; the accuracy on real MNIST and Fashion-MNIST in docs/results.md."""

import pytest
from helpers import (
    ONE_THREAD,
    all_runs,
    ffbench_here,
    make_cifar,
    make_mnist,
    train_on_digits,
    write_md5sums,
)

CWC = ["algo.loss=cwc", "algo.label_input=none", "algo.negatives=none", "model.channels=30"]


@pytest.mark.parametrize(
    "label",
    [["algo.label_input=pixels"], ["algo.label_input=planes"], ["algo.label_input=pattern"], CWC],
    ids=["pixels", "planes", "pattern", "cwc"],
)
def test_a_conv_net_learns_the_digits_with_each_label_input(label):
    result = train_on_digits([ONE_THREAD, "model=conv", "trainer.epochs=15", *label])
    # measured: pixels 0.93, planes 0.76, pattern 0.91, cwc 0.96; chance is 0.1
    assert result["test_accuracy_goodness"] > 0.6


def test_conv_presets_and_their_bp_twins_run_on_files_in_the_real_formats(launch, tmp_path):
    """MNIST and Fashion-MNIST share the IDX format, so one folder of generated files feeds
    both; CIFAR-10's generated batches feed its presets. One epoch each: the presets compose,
    build the same net for FF and BP, train and record."""
    mnist = make_mnist(tmp_path / "mnist")
    sums = tmp_path / "mnist.md5"
    write_md5sums(mnist, sums)
    make_cifar(tmp_path / "cifar")
    cifar_sums = tmp_path / "cifar.md5"
    write_md5sums(tmp_path / "cifar" / "cifar-10-batches-py", cifar_sums)
    common = ["trainer.epochs=1", "dataset.val_size=40", ONE_THREAD]
    for presets, root, checksums in (
        ("mnist_conv,mnist_conv_bp,fashion_mnist_conv,fashion_mnist_conv_bp", mnist, sums),
        ("cifar10_conv,cifar10_conv_bp", tmp_path / "cifar", cifar_sums),
    ):
        result = ffbench_here(
            launch,
            "-m",
            f"+experiment={presets}",
            f"dataset.root={root}",
            f"dataset.checksums={checksums}",
            *common,
        )
        assert result.returncode == 0, result.stderr[-3000:]
    runs = [run for run in all_runs(launch) if "sweep" not in run.info.run_name]
    assert len(runs) == 6 and {run.info.status for run in runs} == {"FINISHED"}
    nets, accuracy = {}, {}
    for run in runs:
        p = run.data.params
        nets.setdefault(p["dataset"], {})[p["algo"]] = {
            key: p[key] for key in p if key.startswith("model.")
        }
        accuracy[p["dataset"], p["algo"]] = {
            key: value for key, value in run.data.metrics.items() if key.endswith("_accuracy")
        }
        # one epoch learns the generated classes (measured: FF 0.33 on the IDX files, 0.93
        # on CIFAR-10; BP 0.81, 0.88; chance is 0.1)
        assert accuracy[p["dataset"], p["algo"]]["train_accuracy"] > 0.25, (p["dataset"], p["algo"])
    assert set(nets) == {"mnist", "fashion_mnist", "cifar10"}
    for dataset, by_algo in nets.items():
        assert by_algo["ff"] == by_algo["bp"], dataset  # the twin trains the very same net
    for algo in ("ff", "bp"):  # the same files, net and seed: the same numbers, to the bit
        assert accuracy["mnist", algo] == accuracy["fashion_mnist", algo], algo
