"""The presets that reproduce the FF methods since 2023 (DeeperForward's TinyCNN, ASGE's VGG8,
CwComp's full recipe; conf/experiment/, their headers say what each cannot express), each
with its BP twin, run one epoch on generated files in the real MNIST and CIFAR-10 formats:
they compose, pass validation, build the preset's net for FF and BP alike, train and record.
Whole sweeps of the app, in this process; the data is tiny, the nets are the presets'."""

import json

import pytest
from helpers import ONE_THREAD, all_runs, ffbench_here, make_cifar, make_mnist, write_md5sums

MNIST, CIFAR = "mnist", "cifar10"  # the two file formats (Fashion-MNIST's is MNIST's)

DEEPERFORWARD = {
    "goodness.name": "mean",
    "model.norm": "class_groups",
    "algo.predictor": "layer_range",
}
ASGE = {
    "goodness.name": "meansq",
    "algo.class_goodness": "projection",
    "model.norm": "mean_square",
}
CWCOMP = {
    "model.batch_norm": "True",
    "model.groups": "[1, 10, 1, 10]",
    "algo.predictor": "softmax",
}
# preset (its BP twin is PRESET_bp): its data set, the channels of its layers, and the
# method's own ingredients, as its FF run records them
METHODS = {
    "deeperforward_tinycnn_mnist": ("mnist", [100, 200, 400, 400], DEEPERFORWARD),
    "deeperforward_tinycnn_fashion_mnist": ("fashion_mnist", [100, 200, 400, 400], DEEPERFORWARD),
    "asge_vgg8_mnist": ("mnist", [128, 256, 256, 512, 512, 512, 512], ASGE),
    "asge_vgg8_fashion_mnist": (
        "fashion_mnist",
        [128, 256, 256, 512, 512, 512, 512],
        ASGE | {"dataset.augment": "flip"},
    ),
    "asge_vgg8_cifar10": (
        "cifar10",
        [128, 256, 256, 512, 512, 512, 512],
        ASGE | {"dataset.augment": "crop_flip", "dataset.crop_padding": "4"},
    ),
    "cwcomp_mnist": ("mnist", [20, 80, 240, 480], CWCOMP),
    "cwcomp_fashion_mnist": ("fashion_mnist", [20, 80, 240, 480], CWCOMP),
    "cwcomp_cifar10": ("cifar10", [20, 80, 240, 480], CWCOMP),
}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Generated data sets and their checksums: MNIST's IDX files (Fashion-MNIST shares the
    format) and CIFAR-10's pickled batches, a few dozen examples each."""
    root = tmp_path_factory.mktemp("data")
    mnist = make_mnist(root / "mnist", n_train=60, n_test=20)
    write_md5sums(mnist, root / "mnist.md5")
    make_cifar(root / "cifar", n=12, n_test=20)
    write_md5sums(root / "cifar" / "cifar-10-batches-py", root / "cifar.md5")
    return {MNIST: (mnist, root / "mnist.md5"), CIFAR: (root / "cifar", root / "cifar.md5")}


# ASGE's VGG8 is the slowest to build and run (about 10 s a dataset): its MNIST preset is in
# make test, the other two in make test-slow (and CI)
SLOW = {"asge_vgg8_fashion_mnist", "asge_vgg8_cifar10"}


@pytest.mark.parametrize(
    "preset", [pytest.param(p, marks=[pytest.mark.slow] * (p in SLOW)) for p in METHODS]
)
def test_a_method_preset_and_its_bp_twin_train_one_epoch(preset, files, launch):
    dataset, channels, ingredients = METHODS[preset]
    root, checksums = files[CIFAR if dataset == CIFAR else MNIST]
    windows = [f"algo.layer_windows=[{','.join(['[1,1]'] * len(channels))}]"]
    result = ffbench_here(
        launch,
        "-m",
        f"+experiment={preset},{preset}_bp",
        f"dataset.root={root}",
        f"dataset.checksums={checksums}",
        "dataset.val_size=20",
        "trainer.epochs=1",
        "trainer.batch_size=20",  # the presets' 128 is more than these files hold
        *(windows if "cwcomp" in preset else []),  # its windows end after epoch 1
        ONE_THREAD,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    runs = {
        run.data.params["algo"]: run for run in all_runs(launch) if "sweep" not in run.info.run_name
    }
    assert set(runs) == {"ff", "bp"}
    nets = {}
    for algo, run in runs.items():
        assert run.info.status == "FINISHED", algo
        metrics, params = run.data.metrics, run.data.params
        for split in ("train", "val", "test"):
            assert 0 <= metrics[f"{split}_accuracy"] <= 1, (algo, split)
        assert json.loads(params["model.channels"]) == channels, algo
        nets[algo] = {key: value for key, value in params.items() if key.startswith("model.")}
    assert nets["ff"] == nets["bp"]  # the twin trains the very same net
    ff = runs["ff"].data.params
    assert {key: ff[key] for key in ingredients} == ingredients
    assert ff["dataset.name"] == dataset
    # FF built every layer of the preset: each predicts alone, by its own goodness
    layers = {key for key in runs["ff"].data.metrics if key.startswith("test_accuracy_layer")}
    assert layers == {f"test_accuracy_layer{k}" for k in range(len(channels))}
