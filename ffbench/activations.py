"""Activations and the normalisation applied to each layer's input.

Both FF and BP build their layers from these, so a sweep over `activation=` or
`model.norm=` changes the two algorithms in exactly the same way.
"""

import functools

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


ACTIVATIONS = {
    "relu": F.relu,
    "relu_fullgrad": relu_fullgrad,
    "gelu": F.gelu,
    "leaky_relu": functools.partial(F.leaky_relu, negative_slope=0.01),
    "silu": F.silu,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "softplus": F.softplus,
    "tdist": tdist,
}


# Activations bounded above (|activity| <= 1): the goodness threshold must stay within what
# such units can reach (goodness.default_theta).
BOUNDED = ("tanh", "sigmoid")


def make_activation(cfg):
    """The function named by an ActivationConfig, with its parameters bound."""
    if cfg.name == "tdist":
        return functools.partial(tdist, nu=cfg.nu)
    return ACTIVATIONS[cfg.name]


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


# Normalisation removes the goodness (the vector's length) before the next layer sees the
# vector, so that layer must find structure in the direction alone.
NORMALISATIONS = {
    "mean_square": mean_square,
    "unit_length": unit_length,
    "standard": standard,
    "none": lambda x: x,
}
