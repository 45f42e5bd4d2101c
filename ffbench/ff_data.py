"""What Forward-Forward trains on: the label written into the input, and negative data.

The label enters the input as LABEL_INPUTS says (algo.label_input); negative data are made as
NEGATIVES says (algo.negatives). A new way of either is a new class or function here and an
entry in its registry; ff.py assembles the learner from them.
"""

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from ffbench.errors import FFBenchError

if TYPE_CHECKING:  # the learner the negatives read their parts from; it imports this module
    from ffbench.ff import ForwardForward


def embed_labels(
    x: torch.Tensor, labels: torch.Tensor, num_classes: int, strength: float, channels: int = 1
):
    """Copy of x whose first `num_classes` pixels of each of its `channels` planes (grey: the
    first features) hold the one-hot label times `strength`: every channel carries the label."""
    x = x.clone()
    planes = x.view(len(x), channels, -1)
    planes[:, :, :num_classes] = 0.0
    planes[torch.arange(len(x), device=x.device), :, labels] = strength
    return x


def embed_neutral(x: torch.Tensor, num_classes: int, channels: int = 1) -> torch.Tensor:
    """Copy of x with every label pixel (of every channel) at 1 / classes: no label, for the
    read-out."""
    x = x.clone()
    x.view(len(x), channels, -1)[:, :, :num_classes] = 1.0 / num_classes
    return x


def label_plane_size(image_shape: tuple) -> int:
    """Pixels of one label plane (algo.label_input=planes): one image plane, or 1 feature
    when the data have no image shape."""
    return image_shape[0] * image_shape[1] if len(image_shape) == 2 else 1


def random_wrong_labels(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """A label drawn uniformly from the wrong ones: it never equals the true label."""
    shift = torch.randint(1, num_classes, labels.shape, device=labels.device)
    return (labels + shift) % num_classes


def sample_wrong_labels(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """A wrong label drawn with probability softmax(scores), the true label excluded: the
    labels the model itself finds most plausible are the hardest negatives."""
    scores = scores.masked_fill(F.one_hot(labels, scores.shape[1]).bool(), float("-inf"))
    return torch.multinomial(torch.softmax(scores, dim=1), 1).squeeze(1)


_BLUR = torch.tensor([0.25, 0.5, 0.25])


def hybrid_masks(n: int, image_shape: tuple, blur_steps: int, device) -> torch.Tensor:
    """Smooth random 0/1 masks (n, pixels): random bits blurred `blur_steps` times with
    [1/4, 1/2, 1/4] in both directions, then thresholded at 0.5."""
    mask = (torch.rand(n, 1, *image_shape, device=device) < 0.5).float()
    across = _BLUR.to(device).view(1, 1, 1, 3)
    for _ in range(blur_steps):
        mask = F.conv2d(F.pad(mask, (1, 1, 0, 0), mode="replicate"), across)
        mask = F.conv2d(F.pad(mask, (0, 0, 1, 1), mode="replicate"), across.transpose(2, 3))
    return (mask > 0.5).float().view(n, -1)


def hybrid_images(
    x: torch.Tensor, image_shape: tuple, blur_steps: int, channels: int = 1
) -> torch.Tensor:
    """Each image mixed with the next one of the (shuffled) batch through a smooth mask:
    realistic short-range statistics, wrong long-range shape. Colour images (channel-first
    rows) use the same mask in every channel."""
    mask = hybrid_masks(len(x), image_shape, blur_steps, x.device).repeat(1, channels)
    return mask * x + (1 - mask) * x.roll(1, dims=0)


def colour_planes(image_shape: tuple, num_features: int) -> int:
    """Colour planes of channel-first rows of `num_features` (1 for grey images, and for data
    that are not (H, W) images): the label is written into each plane."""
    plane = label_plane_size(image_shape)
    if len(image_shape) != 2 or num_features % plane:
        return 1
    return num_features // plane


def rms(x: torch.Tensor) -> torch.Tensor:
    """Root mean square of each row, (N, 1): the scale of one normalised image feature."""
    return x.pow(2).mean(dim=1, keepdim=True).sqrt()


class LabelInput:
    """How the label enters the input (algo.label_input): what every entry of LABEL_INPUTS is.

    Built from the number of classes, algo.label_strength, the data's image shape and
    features, and the normalisation of the layer inputs (model.norm); writes a label into raw
    data rows, or the neutral label (no class preferred) for the label-free pass of the
    read-out. One that `normalises_image` normalises the image by itself and then adds the
    label at a set energy, so the stack takes its rows as they come; the paper's pixels are
    written first and normalised with the image, as in the reference code."""

    normalises_image = False

    def __init__(self, num_classes: int, strength: float, image_shape, num_features: int, norm):
        self.num_classes, self.strength, self.norm = num_classes, strength, norm

    def in_features(self, num_features: int) -> int:
        """The stack's input size for data rows of `num_features`."""
        return num_features

    def with_label(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def neutral(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class PixelLabels(LabelInput):
    """The one-hot label in the first pixels of every colour plane (the paper)."""

    def __init__(self, num_classes, strength, image_shape, num_features, norm):
        super().__init__(num_classes, strength, image_shape, num_features, norm)
        if num_features <= num_classes:
            raise FFBenchError(
                f"algo.label_input=pixels writes the label into the first {num_classes} "
                f"features, and the data have {num_features}: set algo.label_input=planes"
            )
        self.channels = colour_planes(image_shape, num_features)

    def with_label(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return embed_labels(x, labels, self.num_classes, self.strength, self.channels)

    def neutral(self, x: torch.Tensor) -> torch.Tensor:
        return embed_neutral(x, self.num_classes, self.channels)


class PlaneLabels(LabelInput):
    """One extra input plane per class, constant over the image, one-hot: every position of a
    conv or locally connected layer sees the label.

    The image is normalised alone and the planes appended after it: the true class's plane
    carries `strength`^2 times the energy of one image plane (per pixel, the image's mean
    square), the others none. The neutral label spreads the same energy over all planes
    (each at strength / sqrt(classes)), so the read-out's pass sees inputs of the energy that
    training saw."""

    normalises_image = True

    def __init__(self, num_classes, strength, image_shape, num_features, norm):
        super().__init__(num_classes, strength, image_shape, num_features, norm)
        self.plane = label_plane_size(image_shape)

    def in_features(self, num_features: int) -> int:
        return num_features + self.num_classes * self.plane

    def _append(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """The normalised image followed by the label planes, plane k at weights[:, k]."""
        image = self.norm(x.float())
        level = self.strength * rms(image) * weights
        return torch.cat([image, level.repeat_interleave(self.plane, dim=1)], dim=1)

    def with_label(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self._append(x, F.one_hot(labels, self.num_classes).float())

    def neutral(self, x: torch.Tensor) -> torch.Tensor:
        c = self.num_classes
        return self._append(x, x.new_full((len(x), c), c**-0.5, dtype=torch.float32))


def class_patterns(num_classes: int, image_shape: tuple, channels: int) -> torch.Tensor:
    """One grating per class over the whole image, (classes, channels * H * W), each of mean
    square 1: cos(2 pi (u y + v x) / period) with class k's orientation pi * (k mod 5) / 5 and
    a period of 3 pixels for k < 5, 5 for the rest. A shifted grating is the same grating at
    another phase, so a convolution's shared filters can tell the class at every position
    (Scodellaro et al. 2023: spatially extended labels)."""
    h, w = image_shape if len(image_shape) == 2 else (1, image_shape[0])
    y, x = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    patterns = []
    for k in range(num_classes):
        angle = torch.pi * (k % 5) / 5
        period = 3.0 if k % 10 < 5 else 5.0
        phase = 2 * torch.pi * (math.sin(angle) * y + math.cos(angle) * x) / period
        plane = torch.cos(phase + 0.5 * k)  # an offset keeps no grating all-zero on the grid
        patterns.append(plane.flatten().repeat(channels))
    patterns = torch.stack(patterns)
    return patterns / patterns.pow(2).mean(dim=1, keepdim=True).sqrt()


class PatternLabels(LabelInput):
    """The label as a class-specific pattern superimposed over the whole image (class_patterns):
    every receptive field of a conv net sees it, and the input keeps its size.

    The image is normalised alone; the pattern is added at `strength`^2 times its energy. The
    neutral label adds the patterns' sum over sqrt(classes), of about the same energy."""

    normalises_image = True

    def __init__(self, num_classes, strength, image_shape, num_features, norm):
        super().__init__(num_classes, strength, image_shape, num_features, norm)
        shape = image_shape if len(image_shape) == 2 else (1, num_features)
        self.patterns = class_patterns(num_classes, shape, colour_planes(shape, num_features))

    def _add(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """The normalised image plus the patterns, pattern k at weights[:, k]."""
        image = self.norm(x.float())
        self.patterns = self.patterns.to(x.device)
        return image + self.strength * rms(image) * (weights @ self.patterns)

    def with_label(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self._add(x, F.one_hot(labels, self.num_classes).float())

    def neutral(self, x: torch.Tensor) -> torch.Tensor:
        c = self.num_classes
        return self._add(x, x.new_full((len(x), c), c**-0.5, dtype=torch.float32))


# algo.label_input -> a LabelInput class; none: no label in the input (a loss that reads the
# class elsewhere, as cwc, or unsupervised negatives)
LABEL_INPUTS = {
    "pixels": PixelLabels,
    "planes": PlaneLabels,
    "pattern": PatternLabels,
    "none": None,
}


# How negative data are made (algo.negatives): (learner, x, y, read-out features) ->
# (positive rows, negative rows). `features` is the read-out's input (None without one).


@dataclass(frozen=True)
class Negatives:
    """A way of making negative data, `make(learner, x, y, features)`, and what it asks of
    the rest: `wrong_label`, whether it writes a wrong label into the input (it needs a label
    input); `unsupervised`, whether it uses no label at all (none in the input, a read-out
    to classify); `needs_readout`, whether it reads the read-out's beliefs; `none`, whether
    it makes no negatives (for losses without them)."""

    make: Callable
    wrong_label: bool = False
    unsupervised: bool = False
    needs_readout: bool = False
    none: bool = False


def random_label(ff: "ForwardForward", x, y, features) -> tuple:
    """The image with its true label, and with a wrong label drawn uniformly."""
    wrong = random_wrong_labels(y, ff.num_classes)
    return ff.labels.with_label(x, y), ff.labels.with_label(x, wrong)


@torch.no_grad()
def _hard_wrong_labels(ff: "ForwardForward", y, features) -> torch.Tensor:
    return sample_wrong_labels(ff.readout(features), y)


def hard_label(ff: "ForwardForward", x, y, features) -> tuple:
    """As random_label, the wrong label drawn from the read-out's softmax on the neutral pass
    (the reference code's way: one pass rather than one per label)."""
    wrong = _hard_wrong_labels(ff, y, features)
    return ff.labels.with_label(x, y), ff.labels.with_label(x, wrong)


def hybrid(ff: "ForwardForward", x, y, features) -> tuple:
    """Unsupervised: the real image against a hybrid of two images (no label anywhere)."""
    channels = colour_planes(ff.image_shape, x.shape[1])
    return x, hybrid_images(x, ff.image_shape, ff.blur_steps, channels)


def no_negatives(ff: "ForwardForward", x, y, features) -> tuple:
    """No negative data (algo.loss=cwc): the classes compete within each layer instead."""
    return x, x[:0]


NEGATIVES = {
    "random_label": Negatives(random_label, wrong_label=True),
    "hard_label": Negatives(hard_label, wrong_label=True, needs_readout=True),
    "hybrid": Negatives(hybrid, unsupervised=True),
    "none": Negatives(no_negatives, none=True),
}
