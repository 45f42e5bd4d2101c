"""dataset=user and dataset=folder: a researcher's own data (ffbench/user_data.py, data.py),
as tensors, a torch Dataset, a folder of .npz files or of MNIST-format IDX files. Validation is
held out of the training examples by the same split as every built-in data set's, images
become channel-first rows, and what users get wrong is one line saying what to change."""

import re
import textwrap

import numpy as np
import pytest
import torch
from helpers import CPU, REPO, make_mnist
from omegaconf import OmegaConf
from PIL import Image

from ffbench import data, experiment
from ffbench.config import compose
from ffbench.errors import FFBenchError
from ffbench.settings import settings_hash

DATA = """
    import numpy as np
    import torch

    def tensors(n=60, classes=3, dtype="uint8"):
        g = torch.Generator().manual_seed(0)
        x = torch.randint(0, 256, (n, 2, 4, 5), generator=g).to(getattr(torch, dtype))
        return x, torch.arange(n) % classes

    def arrays(n=40):
        return np.ones((n, 7), dtype=np.float32), np.arange(n) % 4

    class Shapes(torch.utils.data.Dataset):
        classes = ["a", "b", "c", "d", "e"]  # more classes than the labels use

        def __init__(self, n=50, odd=None):
            self.n, self.odd = n, odd

        def __len__(self):
            return self.n

        def __getitem__(self, i):
            side = 7 if i == self.odd else 6
            return torch.full((1, side, 6), i / self.n), i % 3

    def words():
        return "not data"

    def float_labels():
        return torch.zeros(10, 4), torch.zeros(10)

    def pil_like():
        return [(object(), 0)]
"""


@pytest.fixture
def mydata(tmp_path, monkeypatch):
    (tmp_path / "mydata.py").write_text(textwrap.dedent(DATA))
    monkeypatch.syspath_prepend(str(tmp_path))


def _load(*overrides: str) -> data.Splits:
    return data.load(compose(["dataset=user", *overrides]).dataset)


def test_tensors_are_split_as_every_data_set_is(mydata):
    splits = _load(
        "dataset.train={_target_: mydata.tensors}", "dataset.val_size=10", "dataset.test_size=5"
    )
    x, y = __import__("mydata").tensors()
    rows = x.reshape(60, -1).float() / 255.0  # channel-first rows, pixels in [0, 1]
    (xt, yt), (xv, yv), (xs, ys) = data._split(rows, y, [10, 5], 0)  # digits' split
    for got, want in ((splits.x_train, xt), (splits.x_val, xv), (splits.x_test, xs)):
        assert torch.equal(got, want)
    assert torch.equal(splits.y_val, yv) and torch.equal(splits.y_test, ys)
    assert (splits.channels, splits.image_shape, splits.num_classes) == (2, (4, 5), 3)
    assert splits.name == "mydata.tensors"
    assert splits.sources["train"].endswith("mydata.py")


def test_a_dataset_with_a_test_target_and_its_own_classes(mydata):
    splits = _load(
        "dataset.train={_target_: mydata.Shapes}",
        "dataset.test={_target_: mydata.Shapes, n: 12}",
        "dataset.val_size=20",
    )
    assert (len(splits.x_train), len(splits.x_val), len(splits.x_test)) == (30, 20, 12)
    assert splits.num_classes == 5  # Shapes.classes
    assert torch.equal(splits.y_test, torch.arange(12) % 3)
    assert (splits.channels, splits.image_shape) == (1, (6, 6))
    # vectors, not images, and numpy arrays
    rows = _load(
        "dataset.train={_target_: mydata.arrays}", "dataset.val_size=4", "dataset.test_size=4"
    )
    assert rows.image_shape == () and rows.num_features == 7 and rows.num_classes == 4


def _npz(folder, name, x, y):
    folder.mkdir(exist_ok=True)
    np.savez(folder / name, x=x, y=y)


def test_a_folder_of_npz_files_or_of_idx_files_needs_no_code(tmp_path):
    folder = tmp_path / "mine"
    _npz(folder, "train.npz", np.full((30, 3, 3), 255, np.uint8), np.arange(30) % 2)
    _npz(folder, "test.npz", np.zeros((8, 3, 3), np.float32), np.arange(8) % 2)
    cfg = compose(["dataset=folder", f"dataset.path={folder}", "dataset.val_size=6"]).dataset
    splits = data.load(cfg)
    assert (len(splits.x_train), len(splits.x_val), len(splits.x_test)) == (24, 6, 8)
    assert splits.x_train.max() == 1.0 and splits.name == "mine"
    assert splits.sources["test"] == str(folder / "test.npz")
    idx = make_mnist(tmp_path / "idx", n_train=50, n_test=20)
    cfg = compose(["dataset=folder", f"dataset.path={idx}", "dataset.val_size=10"]).dataset
    splits = data.load(cfg)
    assert (len(splits.x_train), len(splits.x_val), len(splits.x_test)) == (40, 10, 20)
    assert splits.image_shape == (28, 28) and splits.x_train.max() <= 1.0


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            ["dataset.train={_target_: mydatas.tensors}"],
            "dataset.train: _target_ mydatas.tensors cannot be imported (ModuleNotFoundError: "
            "No module named 'mydatas'): put the folder holding its package on PYTHONPATH, or "
            "correct the name",
        ),
        (
            ["dataset.train={_target_: mydata.words}"],
            "dataset.train returned a str: return (inputs, labels) tensors or a torch Dataset "
            "of (input, label) pairs",
        ),
        (
            ["dataset.train={_target_: mydata.float_labels}"],
            "dataset.train: labels of shape (10,) and type torch.float32: give one whole-number "
            "class index per example, shape (N,)",
        ),
        (
            ["dataset.train={_target_: mydata.pil_like}"],
            "dataset.train: the input of item 0 is a object, not a tensor or array: return "
            "tensors (e.g. with a torchvision.transforms.ToTensor transform)",
        ),
        (
            ["dataset.train={_target_: mydata.Shapes, odd: 3}"],
            "dataset.train: input 3 has shape (1, 7, 6), input 0 (1, 6, 6): make every example "
            "the same shape (e.g. a Resize transform)",
        ),
        (
            ["dataset.train={_target_: mydata.tensors}", "dataset.num_classes=2"],
            "dataset.train: labels run from 0 to 2, outside the 2 classes 0..1: number the "
            "classes from 0, or set dataset.num_classes=3",
        ),
        (
            ["dataset.train={_target_: mydata.tensors}", "dataset.val_size=10"],
            "mydata.tensors has no test examples and dataset.test_size=None: set "
            "dataset.test_size between 1 and 59 (held out), or give dataset.test",
        ),
        (
            ["dataset.train={_target_: mydata.tensors}", "dataset.test={_target_: mydata.arrays}"],
            "mydata.tensors: test inputs of shape (7,), training inputs (2, 4, 5): make them the "
            "same shape",
        ),
        (
            ["dataset=folder"],
            "dataset=folder reads the folder of dataset.path: set dataset.path=FOLDER",
        ),
        (
            [
                "dataset.train={_target_: mydata.arrays}",
                "dataset.val_size=4",
                "dataset.test_size=4",
                "dataset.augment=flip",
            ],
            "dataset.augment=flip crops or flips images, but mydata.arrays's examples are rows "
            "of 7 features: set dataset.augment=none",
        ),
    ],
    ids=lambda v: v[0] if isinstance(v, list) else "",
)
def test_what_users_get_wrong_in_their_data_is_one_line(mydata, overrides, message):
    with pytest.raises(FFBenchError) as err:
        _load(*overrides)
    assert str(err.value) == message


def test_a_folder_without_data_says_what_to_put_there(tmp_path):
    cfg = compose(["dataset=folder", f"dataset.path={tmp_path}"]).dataset
    with pytest.raises(FFBenchError, match="holds neither train.npz nor MNIST's IDX files"):
        data.load(cfg)


def test_the_settings_hash_covers_the_data_targets_and_their_arguments():
    def hashed(*overrides):
        return settings_hash(compose(["dataset=user", *overrides]), "cpu")

    mine = "dataset.train={_target_: mydata.tensors, n: 60}"
    assert hashed(mine) != hashed("dataset.train={_target_: mydata.tensors, n: 61}")
    assert hashed(mine) != hashed(mine, "dataset.test={_target_: mydata.tensors, n: 9}")
    assert hashed(mine) != hashed(mine, "dataset.num_classes=4")
    assert hashed(mine) == hashed(mine, "dataset.path=/elsewhere")  # folder's key
    folder = ["dataset=folder", "dataset.path=/data/a"]
    assert settings_hash(compose(folder), "cpu") != settings_hash(
        compose(["dataset=folder", "dataset.path=/data/b"]), "cpu"
    )


def test_the_user_path_of_docs_extending_md_works_as_written(tmp_path, monkeypatch):
    """Its package (blocks, PngFolder) and its two YAML files, taken from the page as they are,
    on an ImageFolder-layout folder of PNGs: the data load, FF and BP build on them."""
    page = (REPO / "docs" / "extending.md").read_text()
    written = {}
    for body in re.findall(r"```(?:python|yaml)\n(# ~/lab/(\S+?):?\s.*?)```", page, re.S):
        path = tmp_path / body[1]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(body[0].replace("/data/mine", str(tmp_path / "pngs")))
        written[body[1]] = path
    assert sorted(written) == [
        "conf/dataset/mine.yaml", "conf/model/mynet.yaml", "mylab/data.py", "mylab/nets.py"
    ]  # fmt: skip
    (tmp_path / "mylab" / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    for part, n in (("train", 520), ("test", 30)):
        for i in range(n):
            folder = tmp_path / "pngs" / part / f"class{i % 3}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((12, 10), 20 * i % 256, np.uint8)).save(folder / f"{i}.png")
    cfg = compose(["model=user", "dataset=user"])
    for group in ("model", "dataset"):
        yaml = OmegaConf.load(
            written[f"conf/{group}/{'mynet' if group == 'model' else 'mine'}.yaml"]
        )
        cfg[group] = OmegaConf.merge(cfg[group], yaml)
    splits = data.load(cfg.dataset)
    assert (len(splits.x_train), len(splits.x_val), len(splits.x_test)) == (20, 500, 30)
    assert (splits.num_classes, splits.channels, splits.image_shape) == (3, 1, (12, 10))
    for algo in ("ff", "bp"):
        cfg.algo.name = algo
        learner = experiment.build_learner(cfg, 120, 3, (12, 10), CPU)
        assert [block.out_shape for block in learner.stack.layers] == [
            (16, 12, 10),
            (16, 6, 5),
            (64,),
        ]
