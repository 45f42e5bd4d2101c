"""Your data: the examples of a data set ffbench does not ship, as tensors (data.py splits them).

`dataset=user`: dataset.train (and dataset.test) name, by `_target_`, a function or class of
yours (instantiated by hydra.utils.instantiate) that returns the examples: a pair (inputs,
labels) of tensors or arrays, or a torch Dataset (`len` and `[i]`) of (input, label) pairs,
such as torchvision's ImageFolder with a ToTensor transform. `dataset=folder`: no code, a
folder of `train.npz` (and `test.npz`) holding arrays `x` and `y`, or of MNIST's four IDX files.

Inputs are one row per example: images (N, C, H, W) or (N, H, W), or vectors (N, features);
uint8 pixels are scaled to [0, 1], other numbers taken as they are. Labels are class indices
0 .. classes - 1; the class count is dataset.num_classes, else the data set's own `classes`
(ImageFolder's), else the largest training label + 1.
"""

import inspect
from dataclasses import dataclass
from pathlib import Path

import hydra.utils
import numpy as np
import torch

from ffbench.errors import FFBenchError
from ffbench.user import instantiate, target_name

NPZ_FILES = ("train.npz", "test.npz")


@dataclass
class Examples:
    x: torch.Tensor
    """(N, ...) float32: one input per row, in its own shape."""
    y: torch.Tensor
    """(N,) int64 class indices."""
    source: str
    """Where they came from (a file or folder), for the run's dataset input."""
    classes: int | None = None
    """The class count the data set itself declares (a Dataset's `classes`), if any."""


def _tensor(value, what: str, key: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor | np.ndarray | int | float):
        return torch.as_tensor(value)
    raise FFBenchError(
        f"{key}: {what} is a {type(value).__name__}, not a tensor or array: return tensors "
        "(e.g. with a torchvision.transforms.ToTensor transform)"
    )


def _stack(rows: list, what: str, key: str) -> torch.Tensor:
    first = rows[0].shape
    for index, row in enumerate(rows):
        if row.shape != first:
            raise FFBenchError(
                f"{key}: {what} {index} has shape {tuple(row.shape)}, {what} 0 {tuple(first)}: "
                "make every example the same shape (e.g. a Resize transform)"
            )
    return torch.stack(rows)


def from_dataset(dataset, key: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The (inputs, labels) of every item of a map-style Dataset, in order."""
    inputs, labels = [], []
    for index in range(len(dataset)):
        item = dataset[index]
        if not isinstance(item, tuple | list) or len(item) != 2:
            raise FFBenchError(
                f"{key}: item {index} of the Dataset is a {type(item).__name__}, not an "
                "(input, label) pair: make __getitem__ return one"
            )
        inputs.append(_tensor(item[0], f"the input of item {index}", key))
        labels.append(_tensor(item[1], f"the label of item {index}", key))
    if not inputs:
        raise FFBenchError(f"{key}: the Dataset is empty: give it examples")
    return _stack(inputs, "input", key), _stack(labels, "label", key)


def examples(made, key: str, source: str) -> Examples:
    """What a `_target_` returned as Examples, checked: inputs and labels as tensors, one
    label per input, labels whole numbers."""
    if isinstance(made, tuple | list) and len(made) == 2:
        x, y = (
            _tensor(made[0], "the first element (inputs)", key),
            _tensor(made[1], "the second element (labels)", key),
        )
    elif hasattr(made, "__getitem__") and hasattr(made, "__len__") and not isinstance(made, str):
        x, y = from_dataset(made, key)
        source = str(getattr(made, "root", None) or source)
    else:
        raise FFBenchError(
            f"{key} returned a {type(made).__name__}: return (inputs, labels) tensors or a torch "
            "Dataset of (input, label) pairs"
        )
    classes = getattr(made, "classes", None)
    return checked(x, y, key, source, len(classes) if classes is not None else None)


def checked(x: torch.Tensor, y: torch.Tensor, key: str, source: str, classes=None) -> Examples:
    if x.dim() not in (2, 3, 4) or x.is_complex() or x.dtype == torch.bool:
        raise FFBenchError(
            f"{key}: inputs of shape {tuple(x.shape)} and type {x.dtype}: give real numbers, one "
            "row per example: (N, features), (N, H, W) or (N, C, H, W)"
        )
    if y.dim() != 1 or y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise FFBenchError(
            f"{key}: labels of shape {tuple(y.shape)} and type {y.dtype}: give one whole-number "
            "class index per example, shape (N,)"
        )
    if len(x) != len(y):
        raise FFBenchError(f"{key}: {len(x)} inputs but {len(y)} labels: give one label per input")
    x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
    return Examples(x, y.long(), source, classes)


def from_target(spec, key: str) -> Examples:
    """The examples the `_target_` at `key` returns; their source is the file of its code,
    or the folder a Dataset says it reads (its `root`)."""
    made = instantiate(spec, key)
    name = target_name(spec)
    try:
        source = inspect.getsourcefile(hydra.utils.get_object(name)) or name
    except TypeError:  # a builtin: no file
        source = name
    return examples(made, key, source)


def class_count(given: int | None, train: Examples, test: Examples | None) -> int:
    """dataset.num_classes, else the data set's own, else the largest training label + 1;
    every label of both parts must lie below it."""
    count = given or train.classes or int(train.y.max()) + 1
    for part, key in ((train, "dataset.train"), (test, "dataset.test")):
        if part is None:
            continue
        low, high = int(part.y.min()), int(part.y.max())
        if low < 0 or high >= count:
            raise FFBenchError(
                f"{key}: labels run from {low} to {high}, outside the {count} classes 0..{count - 1}: "
                f"number the classes from 0, or set dataset.num_classes={high + 1}"
            )
    if count < 2:
        raise FFBenchError(
            f"the data have {count} class: give labels of two classes or more, or set dataset.num_classes"
        )
    return count


def read_npz(path: Path, key: str) -> Examples:
    """The arrays `x` (inputs) and `y` (labels) of one .npz file."""
    try:
        with np.load(path, allow_pickle=False) as arrays:
            if "x" not in arrays or "y" not in arrays:
                raise FFBenchError(
                    f"{path} holds arrays {', '.join(arrays.files) or 'none'}: save the inputs as x and "
                    "the labels as y (np.savez(path, x=inputs, y=labels))"
                )
            x, y = torch.from_numpy(arrays["x"]), torch.from_numpy(arrays["y"])
    except (OSError, ValueError) as err:
        raise FFBenchError(f"{path} is not a readable .npz file ({err}): replace it") from None
    return checked(x, y, key, str(path))


def npz_folder(folder: Path) -> tuple[Examples, Examples | None] | None:
    """(training, test or None) examples of a folder's train.npz (and test.npz); None when
    the folder has no train.npz."""
    train, test = (folder / name for name in NPZ_FILES)
    if not train.is_file():
        return None
    test_examples = read_npz(test, f"{test}") if test.is_file() else None
    return read_npz(train, f"{train}"), test_examples
