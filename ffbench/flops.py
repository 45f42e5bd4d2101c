"""Useful floating-point work of training and evaluation, counted from the architecture.

Only the matrix products count (2 FLOPs per multiply-add, MACs = fan-in x fan-out of a
layer; for a convolutional or locally connected layer, output positions x kernel area x input
channels x output channels, padding zeros included, the same for both); element-wise work,
normalisation, goodness and the black box are left out, so the count is a lower bound and
"achieved GFLOP/s" is honest. So are two small products: the fixed class projection of
`algo.class_goodness=projection` (pooled units x classes per layer) and the softmax head of
`algo.predictor=softmax` (classes x classes): under 0.01% of the MACs of the ASGE presets.
Per training example and hidden layer:

- FF: forward of the positive and the negative example, 2 x 2*MACs, and the weight gradient
  of both, 2 x 2*MACs; no input gradient (inputs are detached). `algo.loss=cwc` has no
  negative example: half of that. With `algo.readout=true`
  (needed for hard negatives and read-out evaluation) the label-free pass that feeds the
  read-out is asked for and counts: 2*MACs per layer, plus the read-out's forward and weight
  gradient, 2 x 2*MACs of the read-out. Negatives that read the read-out's beliefs
  (`algo.negatives=hard_label`) run its forward once more, on the step's examples before the
  update: another 2*MACs of the read-out.
- FF, sequential schedule: a pass trains one layer and runs the frozen layers below it
  forward, 2 x 2*MACs each.
- BP (and bp_ckpt, whose recomputation is overhead, not useful work): forward 2*MACs, input
  gradient 2*MACs (not for the first layer, whose input is data), weight gradient 2*MACs;
  the output layer likewise.
- Goodness evaluation: 2*MACs per layer for every candidate label.
- FF with per-layer training windows (algo.layer_windows): each pass as the sequential
  schedule's, for the layers whose windows hold its epoch (2 x 2*MACs each per row) and the
  others below the top one of them (forward, 2*MACs), averaged over the passes.

Shortcuts (model.shortcuts) count through the MACs of the layer above a concatenation, whose
input is wider; their pooling and sums, and batch norm (model.batch_norm), are element-wise
and not counted (nor by FlopCounterMode: tests/unit/test_net_options.py).

A user's blocks (model=user) have no hand count: torch's FlopCounterMode counted, when the
stack was built (user.py), the same class of work in each block's forward pass, in its
backward pass to its weights (which in a block of several products runs through the inner
ones' inputs too) and in its input's gradient: they replace the three 2*MACs above
(tests/unit/test_user_blocks.py checks both against a real training step).
"""

import math

from ffbench.ff_data import NEGATIVES
from ffbench.goodness import LOSSES
from ffbench.learners import LEARNERS
from ffbench.models import (
    LAYERS,
    image_chw,
    layer_channels,
    layer_groups,
    layer_inputs,
    layer_sizes,
    spatial_shapes,
)
from ffbench.windows import plan


def model_layers(cfg, features: int, image_shape: tuple | None = None):
    """(MACs, output units) of each hidden layer of cfg.model; spatial models need the image
    shape of the data ((H, W) or (C, H, W)) and raise ValueError without one."""
    m = cfg.model
    if LAYERS[m.name].blocks is not None:
        raise ValueError(f"model={m.name}: the FLOP count needs the built stack of its blocks")
    if not LAYERS[m.name].spatial:
        inputs = layer_inputs(m, features, [m.width] * m.depth)  # shortcuts may widen them
        return [fan_in * m.width for fan_in in inputs], [m.width] * m.depth
    if image_shape is None:
        raise ValueError(f"model={m.name}: the FLOP count needs the image shape of the data")
    in_shape = image_chw(image_shape, features)
    channels = layer_channels(m.channels, m.depth)
    sizes = layer_sizes(m)
    convs, outputs = zip(*spatial_shapes(in_shape, channels, **sizes), strict=True)
    groups = layer_groups(m, channels, image_shape, features)
    # a grouped convolution's output channel sums over its group's input channels only
    ins = layer_inputs(m, in_shape[0], channels)  # what the layer below passes up
    inputs = [c_in // g for c_in, g in zip(ins, groups, strict=True)]
    area = [k * k for k in sizes["kernel"]]
    macs = [c * h * w * a * c_in for (c, h, w), a, c_in in zip(convs, area, inputs, strict=True)]
    return macs, [math.prod(shape) for shape in outputs]


def layer_flops(cfg, features: int, image_shape=None, stack=None) -> tuple[list, list, list, list]:
    """FLOPs per example of each hidden layer's forward pass, of its backward pass to its
    weights (its input detached) and of its input's gradient, and its output units: 2*MACs
    each for the built-in layers; what a built `stack` measured, for user blocks."""
    if stack is not None and stack.measured is not None:
        forward, weights, inputs = (list(part) for part in zip(*stack.measured, strict=True))
        return forward, weights, inputs, list(stack.out_features)
    macs, units = model_layers(cfg, features, image_shape)
    twice = [2 * n for n in macs]
    return twice, twice, twice, units


def _readout_macs(cfg, units: list[int], classes: int) -> int:
    depth = len(units)
    evaluated = depth - (1 if cfg.algo.eval_skip_first and depth > 1 else 0)
    return sum(units[depth - evaluated :]) * classes


def train_flops_per_example(cfg, features: int, classes: int, image_shape=None, stack=None):
    """Useful FLOPs of one training example in one pass over the data, averaged over the
    passes of the run (they differ only in FF's sequential schedule)."""
    forward, weights, inputs, units = layer_flops(cfg, features, image_shape, stack)
    depth = len(forward)
    if LEARNERS[cfg.algo.name].end_to_end:  # no input gradient of the first layer: data
        head = units[-1] * classes
        return sum(forward) + sum(inputs[1:]) + sum(weights) + 6 * head
    extra = 0
    if cfg.algo.readout:
        beliefs = 1 if NEGATIVES[cfg.algo.negatives].needs_readout else 0  # hard negatives
        extra = sum(forward) + (4 + 2 * beliefs) * _readout_macs(cfg, units, classes)
    rows = 2 if LOSSES[cfg.algo.loss].negatives else 1  # cwc: the positive example only
    windowed = plan(cfg, depth)  # algo.layer_windows: the layers each pass trains
    if windowed is not None:
        per_pass = [rows * _pass_flops(forward, weights, layers) for layers, _ in windowed]
        return sum(per_pass) / len(per_pass) + extra
    if cfg.algo.schedule == "sequential":
        per_pass = [rows * (forward[k] + weights[k] + sum(forward[:k])) for k in range(depth)]
        return sum(per_pass) / depth + extra
    return rows * (sum(forward) + sum(weights)) + extra


def _pass_flops(forward: list, weights: list, trained: tuple[int, ...]) -> int:
    """FLOPs of one FF example (of one row) in a pass that trains the layers `trained`:
    forward and weight gradient of each, forward alone of the others below the top one."""
    below = [k for k in range(max(trained)) if k not in trained]
    return sum(forward[k] + weights[k] for k in trained) + sum(forward[k] for k in below)


def goodness_eval_flops_per_example(cfg, features: int, classes: int, image_shape=None, stack=None):
    """FLOPs of predicting one example by goodness: every label through every layer (cwc:
    one pass, the classes compete within it)."""
    passes = 1 if LOSSES[cfg.algo.loss].competitive else classes
    return passes * sum(layer_flops(cfg, features, image_shape, stack)[0])


def train_matmul_shapes(cfg, features: int, classes: int, batch: int) -> list[tuple[int, int, int]]:
    """The matrix products (m, k, n) of one training step of an MLP on minibatches of `batch`:
    what train_flops_per_example counts, as shapes to time plain matmuls of (the reference
    of `make bench` and trainer.matmul_reference). FF: forward and weight gradient of
    [positives; negatives] (positives only under cwc), plus the read-out's label-free forward
    and its own products if it has one; BP: input gradients too, and the output layer."""
    depth, width = cfg.model.depth, cfg.model.width
    ff = not LEARNERS[cfg.algo.name].end_to_end
    rows = 2 * batch if ff and LOSSES[cfg.algo.loss].negatives else batch
    shapes = []
    for fan_in in layer_inputs(cfg.model, features, [width] * depth):
        shapes += [(rows, fan_in, width), (fan_in, rows, width)]
        if ff and cfg.algo.readout:
            shapes.append((batch, fan_in, width))
        if not ff and fan_in != features:
            shapes.append((rows, width, fan_in))  # input gradient
    if ff and cfg.algo.readout:
        _, units = model_layers(cfg, features)
        evaluated = _readout_macs(cfg, units, classes) // classes
        shapes += [(batch, evaluated, classes), (classes, batch, evaluated)]
        if NEGATIVES[cfg.algo.negatives].needs_readout:  # its beliefs pick hard negatives
            shapes.append((batch, evaluated, classes))
    if not ff:  # output layer: forward, input and weight gradient
        shapes += [(batch, width, classes), (batch, classes, width), (width, batch, classes)]
    return shapes
