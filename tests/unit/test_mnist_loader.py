"""MNIST from a folder of IDX files written in the real format."""

import gzip

import pytest
import torch
from helpers import make_mnist

from ffbench.data import load_digits, load_mnist
from ffbench.download import REGISTRY, folders
from ffbench.errors import FFBenchError


@pytest.mark.parametrize("compress", [True, False])
def test_reads_gzip_and_raw_idx_with_a_held_out_validation_split(tmp_path, compress):
    folder = make_mnist(tmp_path / "m", n_train=300, n_test=100, compress=compress)
    splits = load_mnist(folder, val_size=60, seed=0)
    assert splits.x_train.shape == (240, 784) and splits.x_val.shape == (60, 784)
    assert splits.x_test.shape == (100, 784)
    assert splits.x_train.dtype == torch.float32
    assert 0.0 <= splits.x_train.min() and splits.x_train.max() == 1.0
    # labels survive the trip: each image's bright row is at 4 + 2 * label
    rows = splits.x_test.view(-1, 28, 28)[:, :, 10].argmax(1)
    assert torch.equal(rows, 4 + 2 * splits.y_test)
    # validation is disjoint from training and together they are the whole training file
    joined = torch.cat([splits.x_train, splits.x_val])
    assert torch.unique(joined, dim=0).shape[0] == 300


def test_the_split_is_fixed_by_its_seed(tmp_path):
    folder = make_mnist(tmp_path / "m")
    a, b = load_mnist(folder, 50, seed=1), load_mnist(folder, 50, seed=1)
    assert torch.equal(a.y_val, b.y_val)
    assert not torch.equal(a.y_val, load_mnist(folder, 50, seed=2).y_val)


def test_folder_comes_from_the_environment_else_the_user_cache(tmp_path, monkeypatch):
    mnist = REGISTRY["mnist"]
    monkeypatch.setenv("FFBENCH_DATA", str(tmp_path))  # a root: files in it or in mnist/
    assert folders(mnist, None) == ([tmp_path, tmp_path / "mnist"], tmp_path / "mnist")
    make_mnist(tmp_path)  # a folder already holding the files: it is the cache itself
    assert folders(mnist, None)[1] == tmp_path
    monkeypatch.delenv("FFBENCH_DATA")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    cache = tmp_path / "xdg" / "ffbench" / "mnist"
    assert folders(mnist, None) == ([cache], cache)


def test_a_missing_file_is_named(tmp_path):
    folder = make_mnist(tmp_path / "m")
    (folder / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FFBenchError, match="has no t10k-labels-idx1-ubyte.gz"):
        load_mnist(folder, 50, 0)


def test_a_corrupt_gzip_is_named(tmp_path):
    folder = make_mnist(tmp_path / "m")
    victim = folder / "train-labels-idx1-ubyte.gz"
    victim.write_bytes(gzip.compress(b"\x00\x00\x08\x01") + b"garbage")
    with pytest.raises(FFBenchError, match="train-labels-idx1-ubyte.gz"):
        load_mnist(folder, 50, 0)


def test_digits_split_sizes_and_range():
    splits = load_digits(val_size=180, test_size=360, seed=0)
    assert (len(splits.x_train), len(splits.x_val), len(splits.x_test)) == (1257, 180, 360)
    assert splits.num_features == 64 and splits.x_train.max() <= 1.0
    assert set(splits.y_test.tolist()) == set(range(10))
