"""Goodness functions and the layer-local losses of Forward-Forward.

A goodness turns a layer's activities (batch, units) into one number per example; a loss
turns the goodness of positive and negative examples into a scalar to minimise.
"""

import torch
import torch.nn.functional as F

GOODNESS = {
    "sumsq": lambda a: a.pow(2).sum(dim=-1),
}


def default_theta(goodness: str, width: int, norm: str) -> float:
    """The threshold that matches a goodness and the normalisation between layers.

    Mean-square normalisation hands each layer an input of mean square 1, so a layer whose
    units keep that scale has sum-of-squares goodness equal to its width: that is the
    reference code's theta. Unit-length normalisation goes with theta = 2 x units in the
    popular scripts (mean of squares 2).
    """
    if goodness != "sumsq":
        raise ValueError(f"no default theta for goodness {goodness!r}")
    return float(width) * (2.0 if norm == "unit_length" else 1.0)


def threshold_loss(g_pos: torch.Tensor, g_neg: torch.Tensor, theta: float) -> torch.Tensor:
    """Logistic loss of p(positive) = sigmoid(G - theta), averaged over positives and negatives."""
    return torch.cat([F.softplus(theta - g_pos), F.softplus(g_neg - theta)]).mean()


LOSSES = {"threshold": threshold_loss}
