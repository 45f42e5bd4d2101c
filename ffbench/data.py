"""Data sets as tensors: train / validation / test splits, images flattened to vectors in [0, 1].

The whole data set is small enough to live on the training device, so training takes
minibatches as index slices and never goes through a DataLoader.
"""

import gzip
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ffbench.config import FFBenchError


@dataclass
class Splits:
    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    image_shape: tuple = ()
    num_classes: int = 10

    @property
    def num_features(self) -> int:
        return self.x_train.shape[1]

    def to(self, device: torch.device) -> "Splits":
        moved = {k: v.to(device) if torch.is_tensor(v) else v for k, v in vars(self).items()}
        return Splits(**moved)


def load(cfg) -> Splits:
    """Load the data set named by `cfg.name` (a DatasetConfig)."""
    if cfg.name == "digits":
        return load_digits(cfg.val_size, cfg.test_size, cfg.split_seed)
    if cfg.name == "mnist":
        return load_mnist(mnist_folder(cfg.root), cfg.val_size, cfg.split_seed)
    raise FFBenchError(f"dataset.name={cfg.name} is unknown: choose digits or mnist")


def _split(x, y, sizes, seed):
    """Cut (x, y) at random into consecutive parts of the given sizes (the rest goes first)."""
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    rest = len(x) - sum(sizes)
    parts = torch.split(order, [rest, *sizes])
    return [(x[idx], y[idx]) for idx in parts]


def _check_val_size(val_size: int, available: int, name: str) -> None:
    if not 0 < val_size < available:
        raise FFBenchError(
            f"dataset.val_size={val_size} does not fit {name}'s {available} training examples: "
            f"set dataset.val_size between 1 and {available - 1}"
        )


# The UCI optical recognition of handwritten digits test set (1797 images of 8x8 pixels,
# values 0..16; CC BY 4.0), in scikit-learn's order, shipped as two IDX files: no download,
# and no scikit-learn import (seconds) in front of every default run.
BUNDLED = Path(__file__).parent / "bundled"


def load_digits(val_size: int, test_size: int | None, seed: int) -> Splits:
    """The bundled 8x8 handwritten digits: 1797 real images, no download."""
    images = read_idx(BUNDLED / "digits-images-idx3-ubyte.gz")
    x = torch.from_numpy(images.reshape(len(images), -1)).float() / 16.0
    y = torch.from_numpy(read_idx(BUNDLED / "digits-labels-idx1-ubyte.gz").astype(np.int64))
    test_size = test_size or 0
    if test_size <= 0 or test_size >= len(x):
        raise FFBenchError(f"dataset.test_size={test_size} must be between 1 and {len(x) - 1}")
    _check_val_size(val_size, len(x) - test_size, "digits")
    (xt, yt), (xv, yv), (xs, ys) = _split(x, y, [val_size, test_size], seed)
    return Splits("digits", xt, yt, xv, yv, xs, ys, image_shape=(8, 8))


MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
_FIX = "set dataset.root=/path/to/mnist or FFBENCH_DATA=/path/to/mnist"


def mnist_folder(root: str | None) -> Path:
    """The folder named by dataset.root, else by $FFBENCH_DATA; it must exist."""
    root = root or os.environ.get("FFBENCH_DATA")
    if not root:
        raise FFBenchError(f"MNIST needs a local folder with its four IDX files: {_FIX}")
    folder = Path(root).expanduser().resolve()
    if not folder.is_dir():
        raise FFBenchError(f"MNIST folder {folder} does not exist: {_FIX}")
    return folder


def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (raw or gzip) into an array of the shape its header declares."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as err:
        raise FFBenchError(
            f"{path} is corrupt or truncated ({err}): replace it with an intact copy"
        ) from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise FFBenchError(f"{path} is not an IDX file of unsigned bytes: replace it")
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    offset = 4 + 4 * ndim
    expected = int(np.prod(shape))
    if len(raw) - offset != expected:
        raise FFBenchError(
            f"{path} is truncated: its header promises {expected} bytes of data, "
            f"found {len(raw) - offset}; replace it with an intact copy"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=offset).reshape(shape).copy()


def _find(folder: Path, stem: str) -> Path:
    for candidate in (folder / f"{stem}.gz", folder / stem):
        if candidate.is_file():
            return candidate
    raise FFBenchError(
        f"{folder} has no {stem}.gz (or {stem}): copy the MNIST files there or {_FIX}"
    )


def load_mnist(folder: Path, val_size: int, seed: int) -> Splits:
    """MNIST from the four standard IDX files; validation is held out of the 60k training set."""
    arrays = {key: read_idx(_find(folder, stem)) for key, stem in MNIST_FILES.items()}
    for part in ("train", "test"):
        if len(arrays[f"{part}_images"]) != len(arrays[f"{part}_labels"]):
            raise FFBenchError(f"MNIST {part} images and labels differ in count in {folder}")

    def tensors(part):
        x = torch.from_numpy(arrays[f"{part}_images"].reshape(len(arrays[f"{part}_images"]), -1))
        return x.float() / 255.0, torch.from_numpy(arrays[f"{part}_labels"].astype(np.int64))

    x, y = tensors("train")
    _check_val_size(val_size, len(x), "MNIST")
    (xt, yt), (xv, yv) = _split(x, y, [val_size], seed)
    xs, ys = tensors("test")
    return Splits("mnist", xt, yt, xv, yv, xs, ys, image_shape=(28, 28))


def minibatches(n: int, batch_size: int, device: torch.device):
    """Index tensors of a fresh random permutation, `batch_size` at a time (the last may be short)."""
    order = torch.randperm(n, device=device)
    yield from order.split(batch_size)
