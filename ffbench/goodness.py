"""Goodness functions and the layer-local losses of Forward-Forward.

A goodness turns a layer's activities (batch, units) into one number per example. FF works
with the *score* `sign * goodness`, where sign is -1 for the inverted objective (positive
data minimises goodness, the paper's "min ssq"), so that losses and evaluation are written
once: a higher score always means "more positive".
"""

import functools

import torch
import torch.nn.functional as F


def sumsq(a: torch.Tensor) -> torch.Tensor:
    """Sum of squared activities (the paper)."""
    return a.pow(2).sum(dim=-1)


def meansq(a: torch.Tensor) -> torch.Tensor:
    """Mean of squared activities (the popular PyTorch scripts)."""
    return a.pow(2).mean(dim=-1)


def sumabs(a: torch.Tensor) -> torch.Tensor:
    """Sum of unsquared activities (the paper's future-work note: "has worked well")."""
    return a.abs().sum(dim=-1)


def split(a: torch.Tensor, features: int) -> torch.Tensor:
    """Feature detectors (the first `features` units) count their squared activity for the
    goodness; the rest are constraint-violation detectors whose squared activity counts
    against it (the paper's open question 6)."""
    squares = a.pow(2)
    return squares[..., :features].sum(dim=-1) - squares[..., features:].sum(dim=-1)


GOODNESS = {"sumsq": sumsq, "meansq": meansq, "sumabs": sumabs, "split": split}


def make_goodness(cfg, width: int):
    """The function named by a GoodnessConfig, for layers of `width` units."""
    if cfg.name == "split":
        return functools.partial(split, features=round(cfg.feature_fraction * width))
    return GOODNESS[cfg.name]


def default_theta(goodness: str, width: int, norm: str) -> float:
    """The threshold that fits a goodness and the normalisation between layers.

    Mean-square normalisation (the reference code) hands each layer an input of mean square 1,
    and theta asks the layer's units for mean square 1 too: sumsq -> width, meansq -> 1.
    Unit-length normalisation goes with meansq and theta 2 in the popular scripts, so there
    the thresholds are doubled. sumabs asks for mean absolute activity 1 (theta = width).
    split balances feature and constraint detectors around 0.
    """
    scale = 2.0 if norm == "unit_length" else 1.0
    return {
        "sumsq": scale * width,
        "meansq": scale,
        "sumabs": float(width),
        "split": 0.0,
    }[goodness]


def threshold_loss(s_pos: torch.Tensor, s_neg: torch.Tensor, theta: float) -> torch.Tensor:
    """Logistic loss of p(positive) = sigmoid(score - theta), averaged over all examples."""
    return torch.cat([F.softplus(theta - s_pos), F.softplus(s_neg - theta)]).mean()


def symba_loss(s_pos: torch.Tensor, s_neg: torch.Tensor, alpha: float) -> torch.Tensor:
    """SymBa: softplus(-alpha * (S_pos - S_neg)), each positive paired with its own negative;
    no threshold, so positive and negative gradients stay balanced."""
    return F.softplus(-alpha * (s_pos - s_neg)).mean()


# algo.loss -> (AlgoConfig, theta) -> loss(s_pos, s_neg); theta is in score units (signed)
LOSSES = {
    "threshold": lambda cfg, theta: functools.partial(threshold_loss, theta=theta),
    "symba": lambda cfg, theta: functools.partial(symba_loss, alpha=cfg.alpha),
}
