"""What Forward-Forward trains on: the label written into the input, and negative data.

The label enters the input as LABEL_INPUTS says (algo.label_input); negative data are made as
NEGATIVES says (algo.negatives). A new way of either is a new class or function here and an
entry in its registry; ff.py assembles the learner from them.
"""

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

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


# How the label enters the input (algo.label_input). Each writes a label into raw data rows,
# or the neutral label (every class at 1 / classes) for the label-free pass of the read-out.


class PixelLabels:
    """The one-hot label in the first pixels of every colour plane (the paper)."""

    def __init__(self, num_classes: int, strength: float, image_shape: tuple, num_features: int):
        self.num_classes, self.strength = num_classes, strength
        self.channels = colour_planes(image_shape, num_features)

    def in_features(self, num_features: int) -> int:
        return num_features

    def with_label(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return embed_labels(x, labels, self.num_classes, self.strength, self.channels)

    def neutral(self, x: torch.Tensor) -> torch.Tensor:
        return embed_neutral(x, self.num_classes, self.channels)


class PlaneLabels:
    """One extra input plane per class, constant over the image, one-hot: every position of a
    conv or locally connected layer sees the label."""

    def __init__(self, num_classes: int, strength: float, image_shape: tuple, num_features: int):
        self.num_classes, self.strength = num_classes, strength
        self.plane = label_plane_size(image_shape)

    def in_features(self, num_features: int) -> int:
        return num_features + self.num_classes * self.plane

    def with_label(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        one_hot = F.one_hot(labels, self.num_classes).to(x.dtype) * self.strength
        return torch.cat([x, one_hot.repeat_interleave(self.plane, dim=1)], dim=1)

    def neutral(self, x: torch.Tensor) -> torch.Tensor:
        c = self.num_classes
        return torch.cat([x, x.new_full((len(x), c * self.plane), 1.0 / c)], dim=1)


LABEL_INPUTS = {"pixels": PixelLabels, "planes": PlaneLabels}


# How negative data are made (algo.negatives): (learner, x, y, read-out features) ->
# (positive rows, negative rows). `features` is the read-out's input (None without one).


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


NEGATIVES = {"random_label": random_label, "hard_label": hard_label, "hybrid": hybrid}
UNSUPERVISED = ("hybrid",)  # negatives that need no label in the input
