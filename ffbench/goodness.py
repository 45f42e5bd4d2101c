"""Goodness functions and the layer-local losses of Forward-Forward.

A goodness turns a layer's activities (batch, units) into one number per example. FF works
with the *score* `sign * goodness`, where sign is -1 for the inverted objective (positive
data minimises goodness, the paper's "min ssq"), so that losses and evaluation are written
once: a higher score always means "more positive".
"""

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ffbench.activations import ACTIVATIONS, NORMALISATIONS

# Every goodness sums in float32, whatever the activities' dtype: a bf16 layer's (N, units)
# output is read once, never copied to float32, and its goodness keeps float32's precision.
F32 = torch.float32


def sumsq(a: torch.Tensor) -> torch.Tensor:
    """Sum of squared activities (the paper)."""
    return a.pow(2).sum(dim=-1, dtype=F32)


def meansq(a: torch.Tensor) -> torch.Tensor:
    """Mean of squared activities (the popular PyTorch scripts)."""
    return a.pow(2).mean(dim=-1, dtype=F32)


def sumabs(a: torch.Tensor) -> torch.Tensor:
    """Sum of unsquared activities (the paper's future-work note: "has worked well")."""
    return a.abs().sum(dim=-1, dtype=F32)


def mean_activity(a: torch.Tensor) -> torch.Tensor:
    """Mean of the activities themselves, unsquared (DeeperForward): after a ReLU, the mean
    activity. It grows linearly with the activity, so a class group's goodness serves as a
    cross-entropy logit as it is (algo.loss=cwc at algo.temperature=1)."""
    return a.mean(dim=-1, dtype=F32)


def split(a: torch.Tensor, features: int) -> torch.Tensor:
    """Feature detectors (the first `features` units) count their squared activity for the
    goodness; the rest are constraint-violation detectors whose squared activity counts
    against it (the paper's open question 6)."""
    squares = a.pow(2)
    return squares[..., :features].sum(dim=-1, dtype=F32) - squares[..., features:].sum(
        dim=-1, dtype=F32
    )


@dataclass(frozen=True)
class Goodness:
    """A goodness and how its threshold is chosen (default_theta): `power`, of the activities
    it adds up (2: squares, 1: absolute values); `mean`, whether it averages over the units
    rather than summing them (then it is the same at every width); `balanced`, whether it
    weighs detectors for and against so that 0 is the natural threshold (split). `params`:
    the GoodnessConfig keys that make_goodness turns into the function's arguments for a
    layer of `width` units. `unit`: what one unit adds to it (its square, its absolute value,
    itself), which a patch of units averages (algo.class_goodness=projection); None where
    units do not simply add up (split). Called, it computes the goodness."""

    fn: Callable
    power: int = 2
    mean: bool = False
    balanced: bool = False
    params: Callable | None = None
    unit: Callable | None = torch.square

    def __call__(self, a: torch.Tensor, **params) -> torch.Tensor:
        return self.fn(a, **params)


GOODNESS = {
    "sumsq": Goodness(sumsq),
    "meansq": Goodness(meansq, mean=True),
    "sumabs": Goodness(sumabs, power=1, unit=torch.abs),
    "mean": Goodness(mean_activity, power=1, mean=True, unit=lambda a: a),
    "split": Goodness(
        split,
        balanced=True,
        params=lambda cfg, width: {"features": round(cfg.feature_fraction * width)},
        unit=None,
    ),
}


def make_goodness(cfg, width: int):
    """The function named by a GoodnessConfig, for layers of `width` units."""
    goodness = GOODNESS[cfg.name]
    if goodness.params is None:
        return goodness.fn
    return functools.partial(goodness.fn, **goodness.params(cfg, width))


def goodness_scale(goodness: str, units: int) -> float:
    """How a goodness grows with the units it sums over: `units` for the sums, 1 for meansq.
    A goodness divided by it is per unit, the same at every width."""
    return 1.0 if GOODNESS[goodness].mean else float(units)


def initial_level(activation: str, power: int, variance: float = 1.0) -> float:
    """E|f(z)|^power for z ~ N(0, variance): what one unit of activation f gives, on average,
    at initialisation (the reference init makes a pre-activation's variance the mean square of
    the normalised input: 1 under mean-square normalisation). By quadrature, so that no
    constant is typed by hand."""
    z = torch.linspace(-10.0, 10.0, 20001, dtype=torch.float64)
    density = torch.exp(-z.pow(2) / 2) / math.sqrt(2 * math.pi)
    values = ACTIVATIONS[activation](z * math.sqrt(variance)).abs().pow(power)
    return float((values * density).sum() * (z[1] - z[0]))


def default_theta(
    goodness: str, units: int, norm: str, activation: str = "relu", *, inputs: int
) -> float:
    """The threshold that fits a goodness, the normalisation between layers and the range of
    the activation, for a layer (or position) of `units` units whose input the normalisation
    takes `inputs` elements at a time.

    The normalisation hands the layer an input of mean square m per element (mean-square
    normalisation, the reference code: 1; unit length: 1/inputs), and theta asks the layer's
    units for mean square m too: sumsq -> m x units, meansq -> m; for ReLU twice what a unit
    gives at initialisation, whatever the normalisation. (The popular scripts pair unit length
    with meansq and theta 2: with Adam at 0.03 for a thousand steps per layer; at ffbench's
    budgets a ReLU layer's goodness never reaches it, and FF learns nothing.) sumabs asks for
    mean absolute activity sqrt(m) (theta = units under mean-square normalisation). split
    balances feature and constraint detectors around 0.

    A bounded unit (tanh, sigmoid) cannot reach those, or only saturated, where it stops
    learning: theta is then what its units give at initialisation (initial_level), so that
    from the first step positives are pushed above it and negatives below.
    """
    g = GOODNESS[goodness]
    if g.balanced:
        return 0.0
    m = NORMALISATIONS[norm].mean_square(inputs)
    if ACTIVATIONS[activation].bounded:
        per_unit = initial_level(activation, g.power, variance=m)
    else:
        per_unit = m ** (g.power / 2)
    return per_unit * goodness_scale(goodness, units)


def threshold_loss(s_pos: torch.Tensor, s_neg: torch.Tensor, labels=None, *, theta: float):
    """Logistic loss of p(positive) = sigmoid(score - theta), averaged over all examples.
    (`labels`, of the positives, only cwc reads: every loss takes the same arguments.)"""
    return torch.cat([F.softplus(theta - s_pos), F.softplus(s_neg - theta)]).mean()


def symba_loss(s_pos: torch.Tensor, s_neg: torch.Tensor, labels=None, *, alpha, scale):
    """SymBa: softplus(-alpha * (S_pos - S_neg) / scale), each positive paired with its own
    negative; no threshold, so positive and negative gradients stay balanced. The scores are
    taken per unit (`scale`: goodness_scale), so that one alpha suits every width: on raw sums
    over 2000 units, alpha 4 would put logits in the thousands."""
    return F.softplus(-alpha / scale * (s_pos - s_neg)).mean()


def channelwise_loss(s_pos: torch.Tensor, s_neg: torch.Tensor, labels, *, temperature):
    """CwComp (Papachristodoulou et al., AAAI 2024): cross-entropy of the true class over the
    class goodnesses (N, classes), each the goodness per unit of the class's channel group,
    divided by the temperature. Classes compete within the layer: no negative data."""
    return F.cross_entropy(s_pos / temperature, labels)


@dataclass(frozen=True)
class Loss:
    """An FF loss: `make(AlgoConfig, theta, scale)` gives a layer's loss(s_pos, s_neg, labels),
    theta in score units (signed), scale the goodness's per-unit divisor (goodness_scale).
    What the rest of FF must know about it: `negatives`, whether it trains on negative data;
    `label_input`, whether the label enters the input; `competitive`, whether it scores one
    goodness per class within each layer (one per example and class: ff.ChannelwiseCompetitive,
    which predicts in one pass), not one per example (predicted with every candidate label
    in the input, one pass each)."""

    make: Callable
    negatives: bool = True
    label_input: bool = True
    competitive: bool = False


LOSSES = {
    "threshold": Loss(lambda cfg, theta, scale: functools.partial(threshold_loss, theta=theta)),
    "symba": Loss(
        lambda cfg, theta, scale: functools.partial(symba_loss, alpha=cfg.alpha, scale=scale)
    ),
    "cwc": Loss(
        lambda cfg, theta, scale: functools.partial(channelwise_loss, temperature=cfg.temperature),
        negatives=False,
        label_input=False,
        competitive=True,
    ),
}
