"""What autograd must save for backward in one training step of the MLP, predicted from shapes
alone.

The prediction mirrors the ops of the MLP's layers (models.LayerStack: normalise, linear,
activation) as each learner runs them (ff.py; bp.py, with or without checkpointing), counting
each distinct storage once and leaving out parameters, exactly as measure.SavedTensors counts;
the spatial models (model=conv, local), batch norm (model.batch_norm), shortcuts
(model.shortcuts) and dropout (model.dropout) are measured only (total_bytes refuses them).
tests/unit/test_memory.py checks it byte for byte against the measurement, so a change to the
layer code that changes memory shows up as a failing test.

total_bytes adds the other parts of a step's total memory that the shapes fix (parameters,
optimizer state, gradients alive at once); tests/unit/test_total_memory.py checks parameters
and optimizer state at the measured peak (measure.LiveTensors) to the byte.
"""

import torch

from ffbench.activations import ACTIVATIONS, NORMALISATIONS
from ffbench.goodness import LOSSES
from ffbench.learners import LEARNERS
from ffbench.models import LAYERS, SHORTCUTS, layer_shortcuts


def saved_activation_bytes(
    algo: str,
    batch: int,
    width: int,
    depth: int,
    features: int,
    classes: int = 10,
    activation: str = "relu",
    norm: str = "mean_square",
    float_bytes: int = 4,
    model: str = "mlp",
    blackbox: str = "none",
    loss: str = "threshold",
) -> int:
    """Peak bytes held for backward by one step of `algo` (`ff`, `bp` or `bp_ckpt`) on an MLP.

    Only the MLP is modelled: `model=conv` or `local`, and a black box under BP (whose
    straight-through estimator saves more), raise ValueError; measure those instead
    (measure.SavedTensors, the run's peak_saved_activations_mb). FF's figure does not change
    with a black box: FF's layer inputs are detached, and nothing on them is saved.

    `batch` is the examples of one backward pass (a micro-batch under gradient accumulation).
    For bp_ckpt it counts what checkpointing keeps between forward and backward; the one layer
    recomputed at a time during backward is held by checkpoint's own hooks and not counted.
    """
    if LAYERS[model].spatial:
        raise ValueError(f"the analytic saved-activation bytes cover model=mlp only, not {model}")
    if algo not in LEARNERS:
        raise ValueError(f"unknown algo {algo!r}")
    learner = LEARNERS[algo]
    if blackbox != "none" and learner.end_to_end:
        raise ValueError(f"the analytic saved-activation bytes of {algo} omit the black box")
    # An activation whose backward needs only its output saves the output, the same storage
    # that the next op saves, so it counts once; the others save their input as well.
    per_layer = 1 if ACTIVATIONS[activation].saves_output_only else 2
    # mean_square / unit_length keep the layer input (for x^2 and the division), the per-row
    # norm and the normalised input (for the weight gradient); without norm the linear layer
    # saves the input itself.
    normed = not NORMALISATIONS[norm].identity
    if not learner.end_to_end:
        # One layer at a time; its input needs no gradient, so only its normalised copy is
        # saved. The widest layer input sets the peak.
        widest_input = max(features, width) if depth > 1 else features
        if LOSSES[loss].negatives:  # positives and negatives, a softplus input per row
            return float_bytes * 2 * batch * (widest_input + per_layer * width + 1)
        # cwc: the positives alone; cross-entropy over the class goodness keeps its
        # log-softmax (classes a row), the int64 targets and one float total weight
        rows = widest_input + per_layer * width + classes
        return float_bytes * batch * rows + 8 * batch + float_bytes
    if not learner.checkpoint:
        # layer 0: normalised input; every layer: its activation(s); layers above 0 and the
        # head: the per-row norm and the normalised input (the activation below is shared)
        rows = features + depth * per_layer * width + normed * depth * (width + 1)
    else:
        # each checkpointed layer keeps its input: the data for layer 0, the activation below
        # for the others; the head keeps the top activation (and norm, normalised copy)
        rows = features + (depth - 1) * width + width + normed * (width + 1)
    # cross-entropy: log-softmax output per row, the int64 targets and one float total weight
    return float_bytes * batch * (rows + classes) + 8 * batch + float_bytes


def _tensor_shapes(cfg, features: int, classes: int) -> tuple[list, list]:
    """(each hidden layer's parameter sizes, the sizes of the other trained tensors: BP's
    output layer, FF's read-out) of the MLP, in elements."""
    width, depth = cfg.model.width, cfg.model.depth
    layers = [[width * i, width] for i in [features] + [width] * (depth - 1)]
    if LEARNERS[cfg.algo.name].end_to_end:
        return layers, [width * classes, classes]
    if not cfg.algo.readout:
        return layers, []
    evaluated = depth - (1 if cfg.algo.eval_skip_first and depth > 1 else 0)
    return layers, [evaluated * width * classes, classes]


def _state_bytes(cfg, sizes: list[int]) -> int:
    """The state the optimizer (experiment.make_optimizer from `cfg.optimizer`, so its own
    dtype and implementation) keeps for tensors of `sizes` elements, learnt from one step on a
    tensor of 1 and one of 2 elements: bytes per element (Adam: two moments; SGD: a momentum
    buffer, none without momentum) and per tensor (Adam: its step count)."""
    from ffbench.experiment import make_optimizer  # experiment imports the learners

    held = []
    for n in (1, 2):
        p = torch.nn.Parameter(torch.zeros(n))
        optimizer = make_optimizer([{"params": [p]}], cfg.optimizer)
        p.grad = torch.ones(n)
        optimizer.step()
        held.append(sum(v.nbytes for v in optimizer.state[p].values() if torch.is_tensor(v)))
    per_element = held[1] - held[0]
    return sum(per_element * n + held[0] - per_element for n in sizes)


def total_bytes(cfg, features: int, classes: int, batch: int, float_bytes: int = 4) -> dict:
    """The parts of an MLP's training memory at its peak that the shapes fix: `param`, the
    `optimizer_state` held (FF at its floor in the sequential schedule: the layer in training's
    and the read-out's, in the stage where that is largest), `grad`: the gradients alive at
    once (all, or one layer's under algo.step_each_layer), and `saved_activations`
    (saved_activation_bytes, of one micro-batch under trainer.grad_accum_steps); `total` is
    their sum. measure.LiveTensors' breakdown at its
    peak holds the parameters and the state to the byte; a gradient being computed is not in
    `.grad` yet, so it counts as the measurement's `other`, as do the step's inputs, outputs
    and temporaries, which this does not predict."""
    m = cfg.model
    shortcuts = [SHORTCUTS[kind].combine for kind in layer_shortcuts(m.shortcuts, m.depth)]
    if m.batch_norm or any(shortcuts) or m.dropout:
        raise ValueError(
            "the analytic memory covers the plain MLP: batch norm (its parameters, running "
            "statistics and saved tensors), shortcuts (wider inputs, kept outputs) and dropout "
            "(its masks) are not modelled; measure them (measure.total)"
        )
    layers, others = _tensor_shapes(cfg, features, classes)
    every = [n for layer in layers for n in layer] + others
    floor = not LEARNERS[cfg.algo.name].end_to_end and cfg.algo.step_each_layer
    stages = layers if floor else [every]  # the gradients alive at once
    held = [
        (
            _state_bytes(
                cfg,
                [*s, *others] if floor and cfg.algo.schedule == "sequential" else every,
            ),
            float_bytes * sum(s),
        )
        for s in stages
    ]
    state, grad = max(held)
    # one backward per micro-batch (trainer.grad_accum_steps): tensor_split's largest part
    batch = -(-batch // cfg.trainer.grad_accum_steps)
    saved = saved_activation_bytes(
        cfg.algo.name,
        batch,
        cfg.model.width,
        cfg.model.depth,
        features,
        classes,
        cfg.activation.name,
        cfg.model.norm,
        float_bytes,
        cfg.model.name,  # a conv or locally connected net: ValueError, as for its saved bytes
        cfg.model.blackbox,
        cfg.algo.loss,
    )
    parts = {"param": float_bytes * sum(every), "optimizer_state": state, "grad": grad}
    parts["saved_activations"] = saved
    return parts | {"total": sum(parts.values())}
