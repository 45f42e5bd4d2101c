"""Your net: hidden layers of the researcher's own code, named by `_target_` (model=user).

`model.blocks` is instantiated with hydra.utils.instantiate, as in any Hydra project: a
`_target_` (a function or class of yours, with its arguments) that returns a list of
nn.Modules, or a list of `_target_`s, one nn.Module each. Each block is one hidden layer of the
shared LayerStack (models.py): `activation(block(normalise(input)))`, trained on its own by FF,
and stacked under BP's output layer by BP, exactly as the built-in layers are. The first block
sees the data as they are shaped (N, C, H, W images, or N rows of features), each block above
sees the output of the block below as that block returned it; between blocks the activities
travel as flat rows, so normalisation, goodness, the label input, the read-out and the black
box treat user blocks as they treat built-in layers.

A block's useful work is counted by torch's FlopCounterMode when the net is built (matrix
products and convolutions, like flops.py's hand counts of the built-in layers, which a test
checks against the same counter): its forward pass, its backward pass to its weights (with
the products inside it that this runs through) and the gradient of its input on top.
"""

import logging
import math

import hydra.utils
import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, conv_backward_flop, conv_flop_count

from ffbench.errors import FFBenchError

PROBE_ROWS = 2  # examples of the forward pass that checks the shapes (batch norm needs 2)
log = logging.getLogger("ffbench")  # the job's log file: the traceback behind a one-line error


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__


def _targets(spec) -> list[str]:
    """Every `_target_` in a config node, nested arguments included."""
    if isinstance(spec, DictConfig | dict):
        found = [str(spec["_target_"])] if "_target_" in spec else []
        return found + [t for value in spec.values() for t in _targets(value)]
    if isinstance(spec, ListConfig | list | tuple):
        return [t for value in spec for t in _targets(value)]
    return []


def instantiate(spec, key: str):
    """hydra.utils.instantiate of the config node at `key`, its failures as one line saying
    what to change: a `_target_` that cannot be imported, or one that raised."""
    if spec is None:
        raise FFBenchError(f"{key} is not set: give it a _target_ (docs/extending.md)")
    for target in _targets(spec):
        try:
            hydra.utils.get_object(target)
        except Exception as err:  # noqa: BLE001 - whatever importing it raised
            cause = err.__cause__ or err
            raise FFBenchError(
                f"{key}: _target_ {target} cannot be imported ({_first_line(cause)}): put the "
                "folder holding its package on PYTHONPATH, or correct the name"
            ) from None
    try:
        return hydra.utils.instantiate(spec, _convert_="all")
    except Exception as err:  # noqa: BLE001 - the user's code may raise anything
        cause = err.__cause__ or err
        log.error("%s: %s raised", key, target_name(spec), exc_info=cause)
        raise FFBenchError(f"{key}: {target_name(spec)} raised {_first_line(cause)}") from None


def target_name(spec) -> str:
    """The `_target_` a node names (its first), for run records."""
    targets = _targets(spec)
    return targets[0] if targets else str(OmegaConf.to_container(spec) if spec else spec)


class Block(nn.Module):
    """One user block as a hidden layer of the stack: flat rows in and out, the block itself
    seeing its input in `in_shape` (per example) and returning `out_shape`. Errors about the
    layer call it by `name` and say that `sized_by` sizes it."""

    sized_by = "its output channels (or units)"

    def __init__(self, block: nn.Module, in_shape: tuple, out_shape: tuple, flops: tuple, name=""):
        super().__init__()
        self.block, self.name = block, f"{name} of model.blocks"
        self.in_shape, self.out_shape = tuple(in_shape), tuple(out_shape)
        self.out_features = math.prod(out_shape)
        self.flops = flops  # per example: forward, weights' gradient, input's gradient

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x.reshape(-1, *self.in_shape)).flatten(1)


def _listed(made, key: str) -> list:
    """What model.blocks made, as a list of blocks: a list (or tuple, or nn.ModuleList) of
    them, or a single module (an nn.Sequential is one block)."""
    if isinstance(made, list | tuple | nn.ModuleList):
        made = list(made)
        if not made:
            raise FFBenchError(f"{key} made no blocks: return a list of nn.Modules, one per layer")
        return made
    return [made]


def _conv_backward_flop(grad_out, x, w, *rest, out_shape=None, **kwargs) -> int:
    """torch's count of a convolution's backward pass, its weights' gradient counted as the
    forward product it mirrors (as many multiply-adds): torch 2.13's FlopCounterMode counts a
    grouped convolution's weight gradient `groups` times over."""
    *options, mask = rest  # bias, stride, padding, dilation, transposed, output padding, groups
    data = conv_backward_flop(grad_out, x, w, *options, [mask[0], False, False], out_val=out_shape)
    return data + (conv_flop_count(x, w, grad_out, transposed=options[4]) if mask[1] else 0)


def flop_counter() -> FlopCounterMode:
    """torch's FlopCounterMode, grouped convolutions' weight gradients counted once."""
    fixed = {torch.ops.aten.convolution_backward: _conv_backward_flop}
    return FlopCounterMode(display=False, custom_mapping=fixed)


def probe(block: nn.Module, in_shape: tuple) -> tuple[tuple, tuple[int, int, int]]:
    """(shape of one example's output, FLOPs per example of the forward pass, of the backward
    pass to the parameters with the input detached (FF's), and of the input's gradient on
    top (BP's, above the first layer)) of `block` on inputs of `in_shape`: passes of zeros in
    eval mode (no batch norm statistics move), counted by FlopCounterMode; the gradients are
    dropped after. Raises what the block raises."""
    was_training = block.training
    block.eval()
    try:
        with flop_counter() as forward:
            out = block(torch.zeros(PROBE_ROWS, *in_shape))
        if not isinstance(out, torch.Tensor) or out.dim() < 2 or len(out) != PROBE_ROWS:
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise TypeError(f"returned {shape}, not a tensor of one row per example")
        weights = _backward_flops(out)
        both = _backward_flops(block(torch.zeros(PROBE_ROWS, *in_shape, requires_grad=True)))
    finally:
        block.train(was_training)
        block.zero_grad(set_to_none=True)
    counts = (forward.get_total_flops(), weights, both - weights)
    return tuple(out.shape[1:]), tuple(n // PROBE_ROWS for n in counts)


def _backward_flops(out: torch.Tensor) -> int:
    """FLOPs FlopCounterMode counts in the backward pass from `out` (0: nothing to train)."""
    if not out.requires_grad:
        return 0
    with flop_counter() as counter:
        out.backward(torch.ones_like(out))
    return counter.get_total_flops()


def _name(index: int, block) -> str:
    return f"block {index + 1} ({type(block).__name__})"


def build_blocks(m, in_shape: tuple, init, passes_up=None) -> list[Block]:
    """The hidden layers model.blocks (of the ModelConfig `m`) names, on inputs of `in_shape`
    per example, each checked to be an nn.Module that takes what the block below passes up:
    its output, or with `passes_up(output shapes so far, blocks)` what a shortcut of the stack
    makes of it (model.shortcuts: a concatenation widens it). `init` (a models.Init) is
    applied to every linear and convolutional module in them."""
    made = _listed(instantiate(m.blocks, "model.blocks"), "model.blocks")
    blocks, shape, outputs = [], tuple(in_shape), []
    for index, block in enumerate(made):
        if not isinstance(block, nn.Module):
            raise FFBenchError(
                f"model.blocks: block {index + 1} is a {type(block).__name__}, not a "
                "torch.nn.Module: make each block an nn.Module (one hidden layer)"
            )
        try:
            out_shape, flops = probe(block, shape)
        except Exception as err:  # noqa: BLE001 - whatever the user's forward raised
            log.error("model.blocks: %s failed on %s", _name(index, block), shape, exc_info=err)
            below, fix = "the data", f"make it take inputs of shape {shape}"
            if len(shape) > 1:
                fix += " (a fully connected block on images: nn.Flatten() first)"
            if index:
                below = f"the output of {_name(index - 1, made[index - 1])}"
                fix = f"make the input of block {index + 1} fit the output of block {index}"
            raise FFBenchError(
                f"model.blocks: {_name(index, block)} cannot take {below}, of shape {shape} "
                f"per example ({_first_line(err)}): {fix}"
            ) from None
        for module in block.modules():
            if isinstance(module, nn.Linear | nn.modules.conv._ConvNd):
                init(module)
        if not any(p.requires_grad for p in block.parameters()):
            raise FFBenchError(
                f"model.blocks: {_name(index, block)} has no parameters to train: make each "
                "block a layer with weights (a parameter-free module goes inside one)"
            )
        blocks.append(Block(block, shape, out_shape, flops, _name(index, block)))
        outputs.append(out_shape)
        shape = passes_up(outputs, len(made)) if passes_up else out_shape
    return blocks
