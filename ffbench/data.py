"""Data sets as tensors: train / validation / test splits, images flattened to vectors.

Pixels are scaled to [0, 1]; with dataset.normalize each channel is then standardised by the
mean and standard deviation of the training split (never validation or test), which Splits
always carries. Colour images are flattened channel by channel (C, H, W), as CIFAR-10 stores
them. The whole data set is small enough to live on the training device, so training takes
minibatches as index slices and never goes through a DataLoader. Files are found, downloaded
and verified by ffbench/download.py.
"""

import gzip
import pickle
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ffbench import download, user_data
from ffbench.errors import FFBenchError


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
    """(height, width) of one channel."""
    num_classes: int = 10
    channels: int = 1
    """Colour channels; a flattened image is `channels` planes of image_shape, one after the other."""
    mean: torch.Tensor | None = None
    """Per-channel mean of the training split's pixels (computed if not given)."""
    std: torch.Tensor | None = None
    """Per-channel standard deviation of the training split's pixels."""
    normalized: bool = False
    """Whether the pixels have been standardised with mean and std."""
    sources: dict = field(default_factory=dict)
    """The file each split's examples were read from, by split ("train", "val", "test")."""

    def __post_init__(self):
        if self.mean is None or self.std is None:
            planes = self.x_train.view(len(self.x_train), self.channels, -1).transpose(0, 1)
            planes = planes.reshape(self.channels, -1).double()
            self.mean = planes.mean(dim=1).float()
            self.std = planes.std(dim=1).clamp_min(1e-8).float()

    @property
    def num_features(self) -> int:
        return self.x_train.shape[1]

    def to(self, device: torch.device) -> "Splits":
        moved = {k: v.to(device) if torch.is_tensor(v) else v for k, v in vars(self).items()}
        return Splits(**moved)

    def standardized(self) -> "Splits":
        """Every split with each channel shifted by the training mean and scaled by the
        training standard deviation."""
        if self.normalized:
            return self
        c = self.channels

        def scale(x):
            return (
                (x.view(len(x), c, -1) - self.mean.view(1, c, 1)) / self.std.view(1, c, 1)
            ).view(len(x), -1)

        parts = {k: scale(getattr(self, k)) for k in ("x_train", "x_val", "x_test")}
        return Splits(**(vars(self) | parts | {"normalized": True}))


def load(cfg) -> Splits:
    """Load the data set named by `cfg.name` (a DatasetConfig)."""
    splits = LOADERS[cfg.name](cfg)
    if AUGMENTATIONS[cfg.augment] is not None and not splits.image_shape:  # a user's rows
        raise FFBenchError(
            f"dataset.augment={cfg.augment} crops or flips images, but {splits.name}'s examples "
            f"are rows of {splits.num_features} features: set dataset.augment=none"
        )
    return splits.standardized() if cfg.normalize else splits


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
    images = str(BUNDLED / "digits-images-idx3-ubyte.gz")  # all three splits are cut from it
    sources = dict.fromkeys(("train", "val", "test"), images)
    return Splits("digits", xt, yt, xv, yv, xs, ys, image_shape=(8, 8), sources=sources)


MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


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
    return parse_idx(raw, path)


def parse_idx(raw: bytes, where) -> np.ndarray:
    """The array held by the (decompressed) bytes of an IDX file; `where` names it in errors."""
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise FFBenchError(f"{where} is not an IDX file of unsigned bytes: replace it")
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    offset = 4 + 4 * ndim
    expected = int(np.prod(shape))
    if len(raw) - offset != expected:
        raise FFBenchError(
            f"{where} is truncated: its header promises {expected} bytes of data, "
            f"found {len(raw) - offset}; replace it with an intact copy"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=offset).reshape(shape).copy()


def _find(folder: Path, stem: str) -> Path:
    for candidate in (folder / f"{stem}.gz", folder / stem):
        if candidate.is_file():
            return candidate
    raise FFBenchError(f"{folder} has no {stem}.gz (or {stem}): copy the IDX files there")


def load_mnist(folder: Path, val_size: int, seed: int, name: str = "mnist") -> Splits:
    """An MNIST-format data set from the four IDX files in `folder`, as they are (no checksum:
    `load` verifies through download.fetch)."""
    paths = {key: _find(folder, stem) for key, stem in MNIST_FILES.items()}
    arrays = {key: read_idx(path) for key, path in paths.items()}
    return _idx_arrays(name, arrays, val_size, seed, folder, paths)


def idx_splits(name: str, files: download.Files, val_size: int, seed: int) -> Splits:
    """MNIST, Fashion-MNIST or KMNIST from the verified contents of its four IDX files."""
    arrays = {key: parse_idx(files[f"{stem}.gz"], stem) for key, stem in MNIST_FILES.items()}
    paths = {key: files.paths[f"{stem}.gz"] for key, stem in MNIST_FILES.items()}
    return _idx_arrays(name, arrays, val_size, seed, name, paths)


def _idx_arrays(name: str, arrays: dict, val_size: int, seed: int, where, paths: dict) -> Splits:
    """Validation is held out of the training file; the test file is the test set. `paths`
    are the files of `arrays`, by the same keys."""
    for part in ("train", "test"):
        images, labels = arrays[f"{part}_images"], arrays[f"{part}_labels"]
        if images.ndim != 3 or labels.ndim != 1:
            raise FFBenchError(f"{name} {part} files in {where} are not images and labels")
        if len(images) != len(labels):
            raise FFBenchError(f"{name} {part} images and labels differ in count in {where}")

    def tensors(part):
        x = torch.from_numpy(arrays[f"{part}_images"].reshape(len(arrays[f"{part}_images"]), -1))
        return x.float() / 255.0, torch.from_numpy(arrays[f"{part}_labels"].astype(np.int64))

    x, y = tensors("train")
    _check_val_size(val_size, len(x), name)
    (xt, yt), (xv, yv) = _split(x, y, [val_size], seed)
    xs, ys = tensors("test")
    shape = tuple(arrays["train_images"].shape[1:])
    train, test = str(paths["train_images"]), str(paths["test_images"])
    sources = {"train": train, "val": train, "test": test}
    return Splits(name, xt, yt, xv, yv, xs, ys, image_shape=shape, sources=sources)


CIFAR10_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))


def _cifar_batch(raw: bytes, member: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        batch = pickle.loads(raw, encoding="bytes")
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        labels = np.asarray(batch[b"labels"], dtype=np.int64)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means a bad file
        raise FFBenchError(f"CIFAR-10 {member} is not a CIFAR-10 python batch ({err})") from None
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(data) != len(labels):
        raise FFBenchError(f"CIFAR-10 {member} holds data of shape {data.shape}, not (N, 3072)")
    return data, labels


def cifar10_splits(name: str, files: download.Files, val_size: int, seed: int) -> Splits:
    """CIFAR-10 from the verified contents of its python batches: 50000 training images (the
    validation split held out of them) and the 10000 of test_batch, 3 x 32 x 32 each, flattened
    channel by channel (red plane, green plane, blue plane) as the files store them."""
    train = [_cifar_batch(files[m], m) for m in CIFAR10_TRAIN]
    x = torch.from_numpy(np.concatenate([d for d, _ in train])).float() / 255.0
    y = torch.from_numpy(np.concatenate([labels for _, labels in train]))
    data, labels = _cifar_batch(files["test_batch"], "test_batch")
    xs, ys = torch.from_numpy(data).float() / 255.0, torch.from_numpy(labels)
    _check_val_size(val_size, len(x), name)
    (xt, yt), (xv, yv) = _split(x, y, [val_size], seed)
    # the first training batch names the training files (they sit together, or in one archive)
    train, test = str(files.paths[CIFAR10_TRAIN[0]]), str(files.paths["test_batch"])
    sources = {"train": train, "val": train, "test": test}
    return Splits(name, xt, yt, xv, yv, xs, ys, (32, 32), channels=3, sources=sources)


def _bundled_digits(cfg) -> Splits:
    return load_digits(cfg.val_size, cfg.test_size, cfg.split_seed)


def _downloaded(reader):
    """A loader that fetches the data set's verified files, then reads them with `reader`."""

    def load_files(cfg) -> Splits:
        files = download.fetch(cfg.name, cfg.root, cfg.mirror, cfg.checksums)
        return reader(cfg.name, files, cfg.val_size, cfg.split_seed)

    return load_files


def user_splits(cfg, name: str, train: user_data.Examples, test) -> Splits:
    """Splits of a user's examples (user_data.py): validation held out of the training
    examples as for every data set, and the test examples, or dataset.test_size held out too
    when there are none. Images become flat channel-first rows."""
    shape = tuple(train.x.shape[1:])
    if test is not None and tuple(test.x.shape[1:]) != shape:
        raise FFBenchError(
            f"{name}: test inputs of shape {tuple(test.x.shape[1:])}, training inputs "
            f"{shape}: make them the same shape"
        )
    classes = user_data.class_count(cfg.num_classes, train, test)
    x, y = train.x.reshape(len(train.x), -1), train.y
    sizes = [cfg.val_size] if test is not None else [cfg.val_size, cfg.test_size or 0]
    if test is None and not 0 < sizes[1] < len(x):
        raise FFBenchError(
            f"{name} has no test examples and dataset.test_size={cfg.test_size}: set "
            f"dataset.test_size between 1 and {len(x) - 1} (held out), or give dataset.test"
        )
    _check_val_size(cfg.val_size, len(x) - sum(sizes[1:]), name)
    (xt, yt), (xv, yv), *held_out = _split(x, y, sizes, cfg.split_seed)
    xs, ys = held_out[0] if held_out else (test.x.reshape(len(test.x), -1), test.y)
    channels, image = (shape[0], shape[1:]) if len(shape) == 3 else (1, shape)
    image = image if len(image) == 2 else ()  # rows of features: no image
    sources = {"train": train.source, "val": train.source}
    sources["test"] = train.source if test is None else test.source
    return Splits(name, xt, yt, xv, yv, xs, ys, image, classes, channels, sources=sources)


def _user(cfg) -> Splits:
    """dataset=user: the examples dataset.train's (and dataset.test's) `_target_` returns."""
    train = user_data.from_target(cfg.train, "dataset.train")
    test = None if cfg.test is None else user_data.from_target(cfg.test, "dataset.test")
    return user_splits(cfg, user_data.target_name(cfg.train), train, test)


def _folder(cfg) -> Splits:
    """dataset=folder: the train.npz (and test.npz) of dataset.path, or its MNIST-format IDX
    files (training and test)."""
    if cfg.path is None:
        raise FFBenchError(
            "dataset=folder reads the folder of dataset.path: set dataset.path=FOLDER"
        )
    folder = Path(cfg.path).expanduser()
    if not folder.is_dir():
        raise FFBenchError(f"dataset.path={cfg.path} is not a folder: set it to your data's folder")
    found = user_data.npz_folder(folder)
    if found is None:  # no train.npz: MNIST's four IDX files, or an error naming both
        try:
            paths = {key: _find(folder, stem) for key, stem in MNIST_FILES.items()}
        except FFBenchError:
            raise FFBenchError(
                f"{folder} holds neither train.npz nor MNIST's IDX files ({MNIST_FILES['train_images']} "
                "...): save your data as train.npz (arrays x and y) and test.npz there"
            ) from None
        arrays = {key: torch.from_numpy(read_idx(path)) for key, path in paths.items()}
        found = [
            user_data.checked(
                arrays[f"{part}_images"],
                arrays[f"{part}_labels"],
                str(paths[f"{part}_images"]),
                str(paths[f"{part}_images"]),
            )
            for part in ("train", "test")
        ]
    return user_splits(cfg, folder.name, *found)


# dataset.name -> loader(DatasetConfig); the files of the downloaded ones: download.REGISTRY
LOADERS = {
    "digits": _bundled_digits,
    "mnist": _downloaded(idx_splits),
    "fashion_mnist": _downloaded(idx_splits),
    "kmnist": _downloaded(idx_splits),
    "cifar10": _downloaded(cifar10_splits),
    "user": _user,
    "folder": _folder,
}


@dataclass(frozen=True)
class Augmentation:
    """What dataset.augment does to the training images before each pass: a random crop of
    the image padded with dataset.crop_padding zeros on each side (a shift by up to that many
    pixels), a horizontal flip of half of them at random, or both (crop first)."""

    crop: bool = False
    flip: bool = False

    def __call__(self, splits: "Splits", padding: int) -> torch.Tensor:
        """A fresh random variant of every training image, as flat rows like x_train; drawn
        from torch's generator of the data's device, so trainer.seed fixes it and a resumed
        run (whose checkpoint holds that generator's state) draws what it would have drawn."""
        x = splits.x_train
        images = x.view(len(x), splits.channels, *splits.image_shape)
        if self.crop:
            images = random_crop(images, padding)
        if self.flip:
            flipped = torch.rand(len(x), device=x.device) < 0.5
            images = torch.where(flipped.view(-1, 1, 1, 1), images.flip(-1), images)
        return images.reshape(len(x), -1)


def random_crop(images: torch.Tensor, padding: int) -> torch.Tensor:
    """Each (C, H, W) image of `images` padded with `padding` zeros on every side, then cut
    back to H x W at a random offset of its own: one gather, no loop over images."""
    n, _, h, w = images.shape
    padded = torch.nn.functional.pad(images, (padding,) * 4)
    top = torch.randint(0, 2 * padding + 1, (n, 1), device=images.device)
    left = torch.randint(0, 2 * padding + 1, (n, 1), device=images.device)
    rows = (top + torch.arange(h, device=images.device)).view(n, 1, h, 1)
    cols = (left + torch.arange(w, device=images.device)).view(n, 1, 1, w)
    batch = torch.arange(n, device=images.device).view(n, 1, 1, 1)
    channel = torch.arange(images.shape[1], device=images.device).view(1, -1, 1, 1)
    return padded[batch, channel, rows, cols]


# dataset.augment -> what it does to the training images (DeeperForward: none; ASGE: flip for
# Fashion-MNIST, crop and flip for CIFAR-10)
AUGMENTATIONS = {
    "none": None,
    "crop": Augmentation(crop=True),
    "flip": Augmentation(flip=True),
    "crop_flip": Augmentation(crop=True, flip=True),
}


def minibatches(n: int, batch_size: int, device: torch.device):
    """Index tensors of a fresh random permutation, `batch_size` at a time (the last may be short)."""
    order = torch.randperm(n, device=device)
    yield from order.split(batch_size)
