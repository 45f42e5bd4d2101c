"""Activations and the normalisation applied to each layer's input.

Both FF and BP build their layers from these, so a sweep over `activation=` or
`model.norm=` changes the two algorithms in exactly the same way.
"""

import torch
import torch.nn.functional as F

ACTIVATIONS = {
    "relu": F.relu,
    "gelu": F.gelu,
    "leaky_relu": lambda x: F.leaky_relu(x, 0.01),
    "silu": F.silu,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "softplus": F.softplus,
}

_EPS = 1e-8


def mean_square(x: torch.Tensor) -> torch.Tensor:
    """Scale each vector to mean square 1 (Hinton's reference code): length sqrt(units)."""
    return x / (x.pow(2).mean(dim=-1, keepdim=True) + _EPS).sqrt()


def unit_length(x: torch.Tensor) -> torch.Tensor:
    """Scale each vector to length 1 (the popular PyTorch scripts)."""
    return x / (x.pow(2).sum(dim=-1, keepdim=True) + _EPS).sqrt()


# Normalisation removes the goodness (the vector's length) before the next layer sees the
# vector, so that layer must find structure in the direction alone.
NORMALISATIONS = {
    "mean_square": mean_square,
    "unit_length": unit_length,
    "none": lambda x: x,
}
