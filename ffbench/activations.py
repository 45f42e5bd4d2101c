"""Activations and the normalisation applied to each layer's input.

Both FF and BP build their layers from these, so a sweep over `activation=` or
`model.norm=` changes the two algorithms in exactly the same way.
"""

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F


def relu_fullgrad(x: torch.Tensor) -> torch.Tensor:
    """ReLU forward, identity backward: the gradient also reaches units that are off, so a
    unit pushed below zero by a negative example can still be pulled back up."""
    return x + (F.relu(x) - x).detach()


def tdist(x: torch.Tensor, nu: float) -> torch.Tensor:
    """Negative log density of a Student-t with `nu` degrees of freedom, up to a constant:
    (nu + 1) / 2 * log(1 + x^2 / nu). The paper's open question 3; heavy-tailed, even."""
    return (nu + 1) / 2 * torch.log1p(x.pow(2) / nu)


@dataclass(frozen=True)
class Activation:
    """An activation and what the rest of ffbench must know about it: `bounded`, whether its
    units stay within [-1, 1] (the goodness threshold must stay within what they can reach:
    goodness.default_theta); `saves_output_only`, whether its backward needs only its
    output, which the next layer saves anyway (analytic.py); `params`, the ActivationConfig
    keys it takes (bound by make_activation). Called, it computes the function."""

    fn: Callable
    bounded: bool = False
    saves_output_only: bool = False
    params: tuple[str, ...] = ()

    def __call__(self, x: torch.Tensor, **params) -> torch.Tensor:
        return self.fn(x, **params)


ACTIVATIONS = {
    "relu": Activation(F.relu, saves_output_only=True),
    "relu_fullgrad": Activation(relu_fullgrad),
    "gelu": Activation(F.gelu),
    "leaky_relu": Activation(functools.partial(F.leaky_relu, negative_slope=0.01)),
    "silu": Activation(F.silu),
    "tanh": Activation(torch.tanh, bounded=True, saves_output_only=True),
    "sigmoid": Activation(torch.sigmoid, bounded=True, saves_output_only=True),
    "softplus": Activation(F.softplus),
    "tdist": Activation(tdist, params=("nu",)),
}


def make_activation(cfg):
    """The function named by an ActivationConfig, with its parameters bound."""
    activation = ACTIVATIONS[cfg.name]
    if not activation.params:
        return activation.fn
    return functools.partial(activation.fn, **{name: cfg[name] for name in activation.params})


_EPS = 1e-8


# Each normalisation returns its input's dtype, with its statistics summed in float32: under
# bf16 autocast a layer's bf16 output goes to the next layer's bf16 matrix product with no
# round trip through float32 (two copies of every activation per layer, docs/performance.md).


def _scaled(x: torch.Tensor, square: torch.Tensor) -> torch.Tensor:
    """x divided by sqrt(square + eps), `square` (N, 1) being float32."""
    return x / (square + _EPS).sqrt().to(x.dtype)


def mean_square(x: torch.Tensor) -> torch.Tensor:
    """Scale each vector to mean square 1 (Hinton's reference code): length sqrt(units)."""
    return _scaled(x, x.pow(2).mean(dim=-1, keepdim=True, dtype=torch.float32))


def unit_length(x: torch.Tensor) -> torch.Tensor:
    """Scale each vector to length 1 (the popular PyTorch scripts)."""
    return _scaled(x, x.pow(2).sum(dim=-1, keepdim=True, dtype=torch.float32))


def standard(x: torch.Tensor) -> torch.Tensor:
    """Zero mean and mean square 1 over each vector (layer norm without its gain and bias):
    the next layer learns faster from centred inputs, which ReLU outputs are not."""
    centred = x - x.mean(dim=-1, keepdim=True, dtype=torch.float32).to(x.dtype)
    return mean_square(centred)


def class_groups(x: torch.Tensor, groups: int = 1) -> torch.Tensor:
    """`standard` within each of `groups` equal slices of each vector: on channel-major rows,
    each class's channel group with all its positions (DeeperForward's group norm, no affine).
    Every group's mean is then 0, so the next layer cannot read which group was the most
    active: the layer's class goodness. The data, which have no class groups, are one group."""
    return standard(x.view(*x.shape[:-1], groups, -1)).view_as(x)


@dataclass(frozen=True)
class Normalisation:
    """A normalisation of each layer's input; `mean_square(n)`, the mean square of each
    element of a vector of n elements it has normalised: with the reference init, the variance
    of every pre-activation of the layer that reads it, so what the defaults of theta scale
    with (goodness.default_theta); `identity`, whether it leaves the
    input as it is (then it saves nothing for backward: analytic.py); `class_groups`, whether
    between layers it acts within each class's group of units (called with groups=classes:
    between_layers). Called, it normalises (the data: one vector)."""

    fn: Callable
    mean_square: Callable[[int], float] = lambda n: 1.0
    identity: bool = False
    class_groups: bool = False

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)

    def between_layers(self, classes: int) -> Callable:
        """The normalisation of a hidden layer's output for the layer above, in a net of
        `classes` classes."""
        return functools.partial(self.fn, groups=classes) if self.class_groups else self.fn


# Normalisation removes the goodness (the vector's length) before the next layer sees the
# vector, so that layer must find structure in the direction alone. Mean-square normalisation
# (the reference code) hands each layer an input of mean square 1 at every width; unit length
# (the popular PyTorch scripts) one of mean square 1/n over n elements, so that a layer's
# pre-activations start sqrt(n) times smaller (`none`: the data's own scale, taken as 1).
NORMALISATIONS = {
    "mean_square": Normalisation(mean_square),
    "unit_length": Normalisation(unit_length, mean_square=lambda n: 1.0 / n),
    "standard": Normalisation(standard),
    "class_groups": Normalisation(class_groups, class_groups=True),
    "none": Normalisation(lambda x: x, identity=True),
}
