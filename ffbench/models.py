"""The layer stack shared by FF and BP, and BP's classifier on top of it.

Every hidden layer is `activation(layer(normalise(input)))`, where `layer` is fully connected
(`model=mlp`), convolutional (`model=conv`) or locally connected (`model=local`: a convolution
without weight sharing, each output position with its own filters); a spatial layer's output
may be pooled (`model.pool`, max or mean: `model.pooling`), and each layer may have its own
channel count, kernel, stride, padding and pooling window (`model.channels=[20,80,240]`). FF
trains each layer on its own; BP adds a linear output layer and trains everything end to end. Because both build on
`LayerStack`, a comparison changes the learning rule and nothing else.

Activities travel between layers as flat rows (batch, units); a spatial layer's units are its
(channels, height, width) map flattened channel-major, as torch lays out an NCHW tensor, so
the label pixels FF writes into the first input features sit in the image's first row.
Between spatial layers the normalisation acts on the whole layer (`model.norm_scope=layer`)
or on each position's channel vector (`position`); the data themselves are normalised as one
vector, as in the MLP (or by FF's label input, which then appends or adds the label:
ff_data.py).

`model.blackbox` puts a transform that autograd cannot see between two hidden layers (see
`BlackBox`): FF trains through it unchanged, BP only with a straight-through estimator.

A layer's output may be batch-normalised after its pooling (`model.batch_norm`, CwComp), and
what it passes up may carry a parameter-free shortcut from two layers down, added or
concatenated (`model.shortcuts`, DeeperForward's ResNet: `Shortcuts`); its own output, which
FF's goodness and read-out and BP's head read, has none.
"""

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint as recompute_in_backward

from ffbench import user
from ffbench.activations import NORMALISATIONS
from ffbench.errors import FFBenchError


def layer_channels(channels, depth: int, key: str = "model.channels", least: int = 1) -> list[int]:
    """model.channels (or another per-layer `key`: groups, kernel, stride, padding, pool) as
    one count per hidden layer: an int is every layer's, a list gives each layer its own
    (bottom to top) of model.depth entries, each at least `least`."""
    counts = list(channels) if not isinstance(channels, str | float | bool | int) else []
    if type(channels) is int:
        counts = [channels] * depth
    if len(counts) != depth or not all(type(c) is int and c >= least for c in counts):
        kind = "positive" if least else "non-negative"
        raise FFBenchError(
            f"{key}={channels} is not one {kind} count per hidden layer: set "
            f"{key} to a number, or to a list of model.depth={depth} numbers"
        )
    return counts


def layer_sizes(m) -> dict[str, list[int]]:
    """model.kernel, stride, padding and pool as one value per hidden layer (each an int for
    every layer, or a list: DeeperForward's TinyCNN has kernels [5,5,3,3] and pools [2,2,1,1])."""
    least = {"padding": 0}
    return {
        key: layer_channels(m[key], m.depth, key=f"model.{key}", least=least.get(key, 1))
        for key in ("kernel", "stride", "padding", "pool")
    }


def layer_groups(m, channels: list[int], image_shape: tuple, features: int) -> list[int]:
    """model.groups as one count per hidden layer (an int is every layer's); each must divide
    the layer's input and output channels."""
    groups = layer_channels(m.groups, m.depth, key="model.groups")
    ins = layer_inputs(m, image_chw(image_shape, features)[0], channels)
    for index, (g, c_in, c_out) in enumerate(zip(groups, ins, channels, strict=True)):
        if c_in % g or c_out % g:
            raise FFBenchError(
                f"model.groups: hidden layer {index + 1} has {c_in} input and {c_out} output "
                f"channels, not both divisible into {g} groups: set its groups to a common "
                "divisor (1: an ordinary convolution)"
            )
    return groups


def spatial_shapes(
    in_shape: tuple,
    channels: list[int],
    kernel: list[int],
    stride: list[int],
    padding: list[int],
    pool: list[int],
) -> list[tuple[tuple[int, int, int], tuple[int, int, int]]]:
    """(channels, height, width) of every hidden layer's convolution output and of its output
    after `pool` x `pool` pooling (the same when pool is 1), for an input of `in_shape`
    (channels, height, width); kernel, stride, padding and pool hold one value per layer
    (layer_sizes). Raises FFBenchError, saying what to set, if a layer's kernel or pooling
    window does not fit its input."""
    shapes = []
    _, h, w = in_shape
    for index, (c, k, s, p, pool_) in enumerate(
        zip(channels, kernel, stride, padding, pool, strict=True)
    ):
        if k > min(h, w) + 2 * p:
            fits = f"model.kernel={min(h, w) + 2 * p}"  # one number for every layer, or its own
            fits = fits if len(set(kernel)) == 1 else f"its kernel to {min(h, w) + 2 * p}"
            raise FFBenchError(
                f"model.kernel={k} is larger than the {h}x{w} input of hidden layer "
                f"{index + 1} (model.padding={p}): set {fits} or less, a larger "
                "model.padding, a smaller model.stride, model.pool or model.depth"
            )
        h, w = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
        conv = (c, h, w)
        if pool_ > min(h, w):
            raise FFBenchError(
                f"model.pool={pool_} is larger than the {h}x{w} map of hidden layer {index + 1}: "
                "set a smaller model.pool or model.depth"
            )
        h, w = h // pool_, w // pool_
        shapes.append((conv, (c, h, w)))
    return shapes


def image_chw(image_shape: tuple, features: int) -> tuple[int, int, int]:
    """(channels, height, width) of the flat input rows, which hold the channels one after
    the other (channel-first): `image_shape` is (H, W), the channels being features / (H*W),
    or (C, H, W); anything else cannot feed a spatial model."""
    shape = tuple(image_shape or ())
    if len(shape) == 2 and shape[0] * shape[1] > 0:
        shape = (features // (shape[0] * shape[1]), *shape)
    if len(shape) != 3 or math.prod(shape) != features:
        raise FFBenchError(
            f"a spatial model needs image rows, but the data are {features} features of shape "
            f"{image_shape or 'unknown'}: set model=mlp"
        )
    return shape


class Conv(nn.Conv2d):
    """A convolutional layer on flat rows: (batch, C_in*H*W) -> (batch, C_out*H'*W'). With
    `groups`, the channels split into that many groups and output group g sees input group g
    alone (CwComp's grouped layers keep one group per class apart)."""

    def __init__(self, in_shape, out_shape, kernel: int, stride: int, padding: int, groups=1):
        super().__init__(in_shape[0], out_shape[0], kernel, stride, padding, groups=groups)
        self.in_shape, self.out_shape = tuple(in_shape), tuple(out_shape)
        self.out_features = math.prod(out_shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.reshape(-1, *self.in_shape)).flatten(1)


class LocallyConnected(nn.Module):
    """A convolution without weight sharing: every output position has its own filters.

    Patches are gathered in one copy and meet their position's weights in one batched matrix
    product (the positions are the batch): no loop over positions. Weight (positions, C_in*k*k, C_out),
    bias (C_out, positions); initialised like nn.Conv2d (uniform, bound 1/sqrt(fan-in)).
    """

    def __init__(self, in_shape, out_shape, kernel: int, stride: int, padding: int, groups=1):
        super().__init__()
        if groups != 1:
            raise FFBenchError("model.groups needs model=conv: set model.groups=1 for model=local")
        self.in_shape, self.out_shape = tuple(in_shape), tuple(out_shape)
        self.kernel, self.stride, self.padding = kernel, stride, padding
        self.out_features = math.prod(out_shape)
        channels, h, w = out_shape
        fan_in = in_shape[0] * kernel * kernel
        bound = 1 / math.sqrt(fan_in)
        self.weight = nn.Parameter(torch.empty(h * w, fan_in, channels).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(channels, h * w).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, s, p = self.kernel, self.stride, self.padding
        image = F.pad(x.reshape(-1, *self.in_shape), (p, p, p, p))
        windows = image.unfold(2, k, s).unfold(3, k, s)  # a view: (batch, C_in, H', W', k, k)
        n, c, h, w = windows.shape[:4]
        # one copy into (positions, batch, fan-in), ordered as nn.Conv2d orders its weights
        # (faster on CPU than F.unfold followed by a transpose: docs/performance.md)
        patches = windows.permute(2, 3, 0, 1, 4, 5).reshape(h * w, n, c * k * k)
        out = _ContiguousGrad.apply(torch.bmm(patches, self.weight))  # (positions, batch, C_out)
        return (out.permute(1, 2, 0) + self.bias).flatten(1)  # (batch, C_out * positions)


class _ContiguousGrad(torch.autograd.Function):
    """Identity whose backward makes the gradient contiguous: the gradient arrives through a
    permutation, and bmm's backward on CPU would otherwise copy it one position at a time
    (docs/performance.md)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad.contiguous()


class _MaxPool(torch.autograd.Function):
    """F.max_pool2d(a, k) (k x k windows, stride k), its output and gradient bit for bit, but
    pooled in channels-last order: on the CPU torch pools an NCHW map 3-4x slower than the same
    map laid out channels-last, a quarter of the conv FF's step (docs/performance.md). Saves the
    argmax indices for backward, as torch does (which also keeps the input)."""

    @staticmethod
    def forward(ctx, a: torch.Tensor, k: int) -> torch.Tensor:
        last = a.contiguous(memory_format=torch.channels_last)  # a copy, freed on return
        out, argmax = torch.ops.aten.max_pool2d_with_indices(last, [k, k], [k, k])
        ctx.save_for_backward(argmax)  # each output's position in its input plane (h * W + w)
        ctx.shape = a.shape
        return out.contiguous()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (argmax,) = ctx.saved_tensors
        n, c, h, w = ctx.shape
        planes = grad.new_zeros(n, c, h * w)  # windows do not overlap: one gradient per input
        planes.scatter_(2, argmax.contiguous().flatten(2), grad.contiguous().flatten(2))
        return planes.view(n, c, h, w), None


def max_pool(a: torch.Tensor, k: int) -> torch.Tensor:
    """model.pooling=max: F.max_pool2d, pooled channels-last on the CPU (_MaxPool)."""
    return F.max_pool2d(a, k) if a.is_cuda else _MaxPool.apply(a, k)


def positions(x: torch.Tensor, channels: int) -> torch.Tensor:
    """Flat channel-major rows (N, channels * positions) seen as (N, positions, channels):
    each position's channel vector last, where norms and goodness functions reduce."""
    return x.view(len(x), channels, -1).transpose(1, 2)


def per_position(norm: Callable, channels: int) -> Callable:
    """`norm` applied to each position's channel vector of flat channel-major rows."""

    def normalise(x: torch.Tensor) -> torch.Tensor:
        return norm(positions(x, channels)).transpose(1, 2).reshape(len(x), -1)

    return normalise


def _numpy(x: torch.Tensor) -> torch.Tensor:
    """sign(x) * log(1 + |x|), computed by NumPy on the CPU: outside torch altogether."""
    a = x.detach().float().cpu().numpy()  # NumPy has no bfloat16
    return torch.from_numpy(np.sign(a) * np.log1p(np.abs(a))).to(x.device)


class BlackBox(nn.Module):
    """A transform between two hidden layers through which no gradient flows.

    `sign`: the sign of each activity (after ReLU: a 0/1 code); `quantize`: a fixed random
    quantiser, floor(x / step + offset) * step with one offset per unit drawn once from
    U[0, 1) (a buffer, saved with the model); `numpy`: sign(x) * log(1 + |x|) computed in
    NumPy. Its output is always computed without a graph, so it is a black box to autograd;
    with `straight_through` the backward pass treats it as the identity (the output is
    x + (f(x) - x).detach()), the only way BP can train the layers below it.
    """

    def __init__(self, kind: str, units: int, step: float, straight_through: bool):
        super().__init__()
        self.kind, self.step, self.straight_through = kind, step, straight_through
        self.register_buffer("offset", torch.rand(units) if kind == "quantize" else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            out = BLACKBOXES[self.kind](self, x.detach()).to(x.dtype)
        if self.straight_through and x.requires_grad:
            return x + (out - x).detach()
        return out


# model.blackbox -> transform(black box, x)
BLACKBOXES = {
    "sign": lambda box, x: torch.sign(x),
    "quantize": lambda box, x: torch.floor(x / box.step + box.offset) * box.step,
    "numpy": lambda box, x: _numpy(x),
}


@dataclass(frozen=True)
class Shortcut:
    """What model.shortcuts puts on a hidden layer's output before the layer above reads it
    (DeeperForward's ResNet): nothing, or the output passed up by the layer two below (its
    `source`), average-pooled to this layer's map and added (same channels) or concatenated
    (more channels for the layer above). Parameter-free. The layer's own output, which its
    goodness, FF's read-out and BP's head read, is left as it is. FF passes every output on
    detached, so no gradient runs along a shortcut; BP's runs through it (a ResNet)."""

    combine: Callable | None
    concatenates: bool = False


# model.shortcuts -> the shortcut on a hidden layer's output (one per layer, "none" for none)
SHORTCUTS = {
    "none": Shortcut(None),
    "add": Shortcut(torch.add),
    "concat": Shortcut(lambda a, source: torch.cat([a, source], dim=1), concatenates=True),
}


def layer_shortcuts(shortcuts, depth: int) -> list[str]:
    """model.shortcuts as one SHORTCUTS name per hidden layer: a name is every layer's, a list
    gives each layer its own. A shortcut reads the output of the layer two below and gives the
    layer above a wider or summed input: none on the first two layers or the top one."""
    kinds = [shortcuts] * depth if isinstance(shortcuts, str) else list(shortcuts)
    names = ", ".join(SHORTCUTS)
    if len(kinds) != depth or any(kind not in SHORTCUTS for kind in kinds):
        raise FFBenchError(
            f"model.shortcuts={shortcuts} is not one of {names} per hidden layer: set it to "
            f"a list of model.depth={depth} of them (e.g. [none,none,add,none,concat,none])"
        )
    for index, kind in enumerate(kinds):
        if SHORTCUTS[kind].combine is not None and not 2 <= index < depth - 1:
            raise FFBenchError(
                f"model.shortcuts: hidden layer {index + 1} has a shortcut, which reads the "
                "output of the layer two below and feeds the layer above: set none on the "
                "first two layers and the top one (model.depth 4 or more)"
            )
    return kinds


def passed_channels(in_channels: int, channels: list[int], kinds: list[str] | None) -> list[int]:
    """The channels (an MLP's units) each hidden layer passes up: its own, plus its shortcut's
    source's if it concatenates (`kinds`: None, no shortcut). An added source must have the
    layer's own channels."""
    passed, kinds = [], kinds or ["none"] * len(channels)
    for index, (c, kind) in enumerate(zip(channels, kinds, strict=True)):
        shortcut = SHORTCUTS[kind]
        if shortcut.combine is not None:
            source = passed[index - 2]
            if shortcut.concatenates:
                c += source
            elif source != c:
                raise FFBenchError(
                    f"model.shortcuts: hidden layer {index + 1} adds the {source} channels that "
                    f"layer {index - 1} passes up to its own {c}: set concat there, or make "
                    "the channels equal"
                )
        passed.append(c)
    return passed


def layer_inputs(m, in_channels: int, channels: list[int]) -> list[int]:
    """The input channels (an MLP's units) of each hidden layer of the ModelConfig `m` whose
    layers have `channels`, on data of `in_channels`: what the layer below passes up."""
    kinds = layer_shortcuts(m.shortcuts, m.depth)
    return [in_channels, *passed_channels(in_channels, channels, kinds)[:-1]]


def as_map(shape: tuple) -> tuple[int, int, int]:
    """(channels, height, width) of a layer's output: an MLP's units are 1 x 1 maps."""
    return tuple(shape) if len(shape) == 3 else (shape[0], 1, 1)


class BatchNorm(nn.BatchNorm2d):
    """nn.BatchNorm2d on flat channel-major rows of (channels, height, width) maps `shape`:
    each channel normalised over the batch and its positions, then scaled and shifted by its
    own two parameters (an MLP's units: 1 x 1 maps, nn.BatchNorm1d's arithmetic)."""

    def __init__(self, shape: tuple[int, int, int]):
        super().__init__(shape[0])
        self.shape = shape

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        return super().forward(a.view(len(a), *self.shape)).flatten(1)


class Shortcuts:
    """The shortcuts of a stack (one SHORTCUTS name per layer, `kinds`) whose layers output
    maps of the shapes `own`: `passed`, the (channels, height, width) each layer passes up,
    and `sources`, the layers whose outputs a shortcut two layers up reads."""

    def __init__(self, kinds: list[str] | None, own: list[tuple[int, int, int]]):
        self.kinds = [SHORTCUTS[kind] for kind in kinds or ["none"] * len(own)]
        channels = passed_channels(own[0][0], [c for c, _, _ in own], kinds)
        self.passed = [(c, h, w) for c, (_, h, w) in zip(channels, own, strict=True)]
        self.sources = {i - 2 for i, s in enumerate(self.kinds) if s.combine is not None}
        for index in sorted(self.sources):
            (_, h, w), (_, below_h, below_w) = own[index + 2], self.passed[index]
            if below_h < h or below_w < w:
                raise FFBenchError(
                    f"model.shortcuts: hidden layer {index + 3} reads the {below_h}x{below_w} "
                    f"output of layer {index + 1}, smaller than its own {h}x{w} map: move the "
                    "shortcut, or keep the maps from growing"
                )

    def __call__(self, index: int, a: torch.Tensor, kept: dict) -> torch.Tensor:
        """Layer `index`'s output `a`, with its shortcut's source average-pooled to fit and
        added or concatenated. `kept` holds the outputs a shortcut above will read (by
        layer), filled here and emptied as they are read: without shortcuts it stays empty."""
        shortcut = self.kinds[index]
        if shortcut.combine is not None:
            source = kept.pop(index - 2)
            (c, h, w), (_, out_h, out_w) = self.passed[index - 2], self.passed[index]
            if (h, w) != (out_h, out_w):
                source = F.adaptive_avg_pool2d(source.view(len(a), c, h, w), (out_h, out_w))
            a = shortcut.combine(a, source.flatten(1).to(a.dtype))
        if index in self.sources:
            kept[index] = a
        return a


def place_blackbox(blackbox: dict | None, passed: list) -> tuple[int | None, nn.Module | None]:
    """(the hidden layer whose input goes through it, the BlackBox) of LayerStack's `blackbox`
    argument, on a stack whose layers pass up maps of the shapes `passed`; (None, None)."""
    if blackbox is None:
        return None, None
    after = blackbox["after"]
    if not 1 <= after < len(passed):  # the count of user blocks: known only now
        raise FFBenchError(
            f"model.blackbox_after={after} is not between two of the {len(passed)} "
            f"hidden layers: set model.blackbox_after between 1 and {len(passed) - 1}"
        )
    size = math.prod(passed[after - 1])
    return after, BlackBox(blackbox["kind"], size, blackbox["step"], blackbox["straight_through"])


class LayerStack(nn.Module):
    def __init__(
        self,
        in_features: int,
        width: int,
        depth: int,
        activation: Callable,
        norm: str,
        spatial: dict | None = None,
        blackbox: dict | None = None,
        normalise_input: bool = True,
        blocks: list | None = None,
        classes: int = 1,
        shortcuts: list[str] | None = None,
        batch_norm: bool = False,
        dropout: float = 0.0,
    ):
        """An MLP of `depth` layers of `width` units; with `spatial` (kind `conv` or `local`,
        in_shape, channels (one per layer), kernel, stride, padding, pool, norm_scope) a stack
        of spatial layers instead (`width` unused). `blackbox` (kind, after, step,
        straight_through) inserts a BlackBox on the input of hidden layer `after` (0-based:
        after the `after`-th layer). Without `normalise_input` the first layer takes its input
        as it comes (FF's label inputs that normalise the image themselves). `shortcuts`:
        one SHORTCUTS name per layer (None: none); `batch_norm`: each layer's output is
        batch-normalised (after pooling); `dropout`: the fraction of each layer's activities
        zeroed in training (after the activation, before pooling). `blocks`:
        hidden layers built elsewhere instead (model=user's, user.Block). `classes`: the groups
        of a normalisation within class groups (model.norm=class_groups)."""
        super().__init__()
        self.in_features = in_features
        self.activation = activation
        self.input_norm = NORMALISATIONS[norm] if normalise_input else (lambda x: x)  # the data
        norm_fn = NORMALISATIONS[norm].between_layers(classes)
        self.shapes = None  # (channels, height, width) of each hidden layer's output, if spatial
        self.pools = None  # spatial: each layer's pooling window (1: none)
        self.dropout = dropout
        self.kinds = shortcuts  # model.shortcuts, one per layer (None: no shortcut)
        self.measured = None  # FLOPs of each layer, if measured (user blocks); else flops.py's
        if blocks is not None:
            self._use_blocks(blocks, norm_fn)
        elif spatial is None:
            ins = [in_features, *passed_channels(in_features, [width] * depth, self.kinds)[:-1]]
            # nn.ModuleList, not a Python list, so state_dict() holds every layer.
            self.layers = nn.ModuleList(nn.Linear(a, width) for a in ins)
            self.out_features = [width] * depth
            self.norms = [norm_fn] * depth
        else:
            self._build_spatial(spatial, norm_fn)
        self._pass_up(batch_norm)
        self.blackbox_at, self.blackbox = place_blackbox(blackbox, self.passed)
        # how many elements each layer's input is normalised over (the data: one vector)
        by_position = spatial is not None and spatial["norm_scope"] == "position"
        below = [p[0] if by_position else math.prod(p) for p in self.passed[:-1]]
        self.norm_sizes = [in_features, *below]

    def _use_blocks(self, blocks: list, norm_fn: Callable) -> None:
        """Hidden layers built elsewhere (user.Block: flat rows in and out, each with its
        output's shape, channels first, and its FLOPs per example: forward, to the weights,
        to the input)."""
        self.layers = nn.ModuleList(blocks)
        self.out_features = [block.out_features for block in blocks]
        self.norms = [norm_fn] * len(blocks)
        self.measured = [block.flops for block in blocks]
        self.shapes = [block.out_shape for block in blocks]  # (C, H, W), or (units,)

    def _build_spatial(self, s: dict, norm_fn: Callable) -> None:
        """The spatial layers of `spatial` (LayerStack's argument), their output shapes and
        their normalisations (per position with norm_scope=position)."""
        kind = LAYERS[s["kind"]].layer
        self.pools, self.pool_fn = s["pool"], POOLS[s["pooling"]]
        convs, self.shapes = zip(
            *spatial_shapes(
                s["in_shape"], s["channels"], s["kernel"], s["stride"], s["padding"], s["pool"]
            ),
            strict=True,
        )
        passed = passed_channels(s["in_shape"][0], [c for c, _, _ in self.shapes], self.kinds)
        passed = [(c, h, w) for c, (_, h, w) in zip(passed, self.shapes, strict=True)]
        ins = [tuple(s["in_shape"]), *passed[:-1]]
        sizes = (s["kernel"], s["stride"], s["padding"], s["groups"])
        self.layers = nn.ModuleList(
            kind(a, b, *each) for a, b, *each in zip(ins, convs, *sizes, strict=True)
        )
        self.out_features = [math.prod(shape) for shape in self.shapes]
        self.norms = [
            per_position(norm_fn, c) if s["norm_scope"] == "position" else norm_fn
            for c, _, _ in self.shapes
        ]

    def _pass_up(self, batch_norm: bool) -> None:
        """The shortcuts (model.shortcuts; `pass_up(index, a, kept)`: what layer `index` with
        output `a` passes up, Shortcuts.__call__) and the batch norms (model.batch_norm)."""
        own = [as_map(shape) for shape in (self.shapes or [(n,) for n in self.out_features])]
        self.pass_up = Shortcuts(self.kinds, own)
        self.passed = self.pass_up.passed  # the (channels, height, width) each layer passes up
        self.batch_norms = None
        if batch_norm:
            self.batch_norms = nn.ModuleList(BatchNorm(shape) for shape in own)

    def normalise(self, index: int, a: torch.Tensor) -> torch.Tensor:
        """Hidden layer `index`'s output normalised as BP's head and FF's read-out see it: in
        float32 even when the layer ran in bf16 (the layer above takes it in the layer's dtype:
        preactivation)."""
        return self.norms[index](a.float())

    def preactivation(self, index: int, x: torch.Tensor) -> torch.Tensor:
        """Input of hidden layer `index`'s activation, given that layer's unnormalised input."""
        if index == self.blackbox_at:
            x = self.blackbox(x)
        # in the dtype the layer below ran in: under bf16 autocast, no copy to float32 and back
        x = self.input_norm(x.float()) if index == 0 else self.norms[index - 1](x)
        return self.layers[index](x)

    def pooled(self, index: int, a: torch.Tensor) -> torch.Tensor:
        """Activities of a spatial layer pooled over its `pool` x `pool` windows (model.pool,
        by model.pooling): the layer's output. After the activation, which need not be
        monotonic (GELU)."""
        if self.pools is None or self.pools[index] == 1:
            return a
        shape = self.layers[index].out_shape
        return self.pool_fn(a.view(len(a), *shape), self.pools[index]).flatten(1)

    def output(self, index: int, u: torch.Tensor) -> torch.Tensor:
        """Hidden layer `index`'s output from its activities `u`: pooled (model.pool), then
        batch-normalised (model.batch_norm: CwComp's order; what its goodness reads and what
        it passes up)."""
        a = self.pooled(index, u)
        return a if self.batch_norms is None else self.batch_norms[index](a)

    def layer(self, index: int, x: torch.Tensor) -> torch.Tensor:
        """Output of hidden layer `index` given that layer's (unnormalised) input."""
        a = self.activation(self.preactivation(index, x))
        if self.dropout:  # model.dropout: in training only (nn.Module.train / eval)
            a = F.dropout(a, self.dropout, self.training)
        return self.output(index, a)

    def outputs(self, x: torch.Tensor):
        """Outputs of every hidden layer, bottom to top (before shortcuts), one at a time."""
        kept = {}
        for index in range(len(self.layers)):
            a = self.layer(index, x)
            yield a
            x = self.pass_up(index, a, kept)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Every hidden layer's output at once (`outputs` holds one at a time)."""
        return list(self.outputs(x))


@dataclass(frozen=True)
class Layers:
    """What model.name chooses: the class of every hidden layer; whether the layers are
    spatial (they see images as (channels, height, width) maps, LayerStack's `spatial`);
    `sized_by`, the ModelConfig keys that size them besides model.depth; and `blocks`, for
    layers that the config builds itself: (ModelConfig, one example's shape, Init) -> them."""

    layer: type
    spatial: bool
    sized_by: tuple[str, ...]
    blocks: Callable | None = None


SPATIAL_SIZES = ("channels", "kernel", "stride", "padding", "pool", "groups", "norm_scope")
POOLS = {  # model.pooling: how a window of model.pool x model.pool positions becomes one
    "max": max_pool,  # its largest activity (CwComp, the conv presets)
    "avg": F.avg_pool2d,  # its mean (DeeperForward's TinyCNN): the mean goodness it keeps
}
LAYERS = {
    "mlp": Layers(nn.Linear, spatial=False, sized_by=("width",)),
    "conv": Layers(Conv, spatial=True, sized_by=SPATIAL_SIZES),
    "local": Layers(LocallyConnected, spatial=True, sized_by=SPATIAL_SIZES),
    "user": Layers(user.Block, spatial=False, sized_by=(), blocks=user.build_blocks),
}


@torch.no_grad()
def reference_init(layer: nn.Module) -> None:
    """Hinton's reference code: weights N(0, 1/fan-in), biases 0. An input of mean square 1
    (mean-square normalisation) then gives pre-activations of variance 1 at every width."""
    # fan-in: what one output unit sums over (LocallyConnected keeps it in dimension 1)
    fan_in = (
        layer.weight.shape[1] if isinstance(layer, LocallyConnected) else layer.weight[0].numel()
    )
    layer.weight.normal_(0.0, fan_in**-0.5)
    if layer.bias is not None:  # a user's layer may have none
        layer.bias.zero_()


@dataclass(frozen=True)
class Init:
    """What model.init does to each freshly built layer (called with the layer), and whether a
    linear classifier trained alongside (FF's read-out) starts at zero: no opinion, as in the
    reference code, where the classifier's problem is convex."""

    fn: Callable
    zero_readout: bool = False

    def __call__(self, layer: nn.Module) -> None:
        self.fn(layer)


# model.init (torch: keep torch's own default, uniform with std 1/sqrt(3 fan-in) and random
# biases)
INITS = {
    "reference": Init(reference_init, zero_readout=True),
    "torch": Init(lambda layer: None),
}


class Classifier(nn.Module):
    """BP's network: the same stack plus a linear output layer on the normalised top layer.

    With `checkpoint`, each hidden layer keeps only its input for backward and is recomputed
    when its gradient is needed: the best memory BP can do on the same net.
    """

    def __init__(self, stack: LayerStack, num_classes: int, init: str, checkpoint: bool = False):
        super().__init__()
        self.stack = stack
        self.head = nn.Linear(stack.out_features[-1], num_classes)
        INITS[init](self.head)
        self.checkpoint = checkpoint

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.checkpoint and torch.is_grad_enabled()):
            return self.head(self.stack.normalise(-1, self.stack(x)[-1]))
        kept = {}
        for index in range(len(self.stack.layers)):
            a = recompute_in_backward(self.stack.layer, index, x, use_reentrant=False)
            x = self.stack.pass_up(index, a, kept)
        return self.head(self.stack.normalise(-1, a))


def split_by_class(stack: LayerStack, classes: int, why: str) -> None:
    """Refuse a stack whose hidden layers do not split into one group of channels (an MLP's
    units) per class, as `why` (an option that reads class groups) needs."""
    units = [shape[0] for shape in stack.shapes] if stack.shapes else stack.out_features
    what = "model.channels" if stack.shapes else "model.width"
    for index, count in enumerate(units):
        if count % classes:
            layer = stack.layers[index]  # a user block names itself and what sizes it
            name = getattr(layer, "name", f"hidden layer {index + 1}")
            raise FFBenchError(
                f"{why} splits each layer into one group per class, but {name} has {count} "
                f"channels or units for {classes} classes: set "
                f"{getattr(layer, 'sized_by', what)} to a multiple of {classes}"
            )


def stack_shortcuts(m, depth: int | None = None) -> list[str] | None:
    """model.shortcuts as LayerStack takes them: one name per layer (of `depth`, the count of
    user blocks; else model.depth), or None where there is none. A concatenation widens what a
    layer passes up, which a per-position normalisation would cut by the layer's own channels:
    refused."""
    kinds = layer_shortcuts(m.shortcuts, depth or m.depth)
    if not any(SHORTCUTS[kind].combine for kind in kinds):
        return None
    concatenates = any(SHORTCUTS[kind].concatenates for kind in kinds)
    if concatenates and LAYERS[m.name].spatial and m.norm_scope == "position":
        raise FFBenchError(
            "model.shortcuts=concat widens what a layer passes up, which "
            "model.norm_scope=position would normalise by the layer's own channels: set "
            "model.norm_scope=layer, or add instead"
        )
    return kinds


def passed_shape(m, outputs: list[tuple], depth: int) -> tuple:
    """What the top of the first len(`outputs`) of `depth` user blocks passes up under
    model.shortcuts, given their output shapes: its output, or widened by a concatenation
    (user.build_blocks' `passes_up`: the shape the block above must take)."""
    kinds = layer_shortcuts(m.shortcuts, depth)[: len(outputs)]
    maps = [as_map(shape) for shape in outputs]
    channels = passed_channels(maps[0][0], [c for c, _, _ in maps], kinds)
    return (channels[-1], *outputs[-1][1:])


def make_stack(
    m,
    features: int,
    image_shape: tuple,
    activation: Callable,
    normalise_input: bool = True,
    classes: int = 1,
) -> LayerStack:
    """The LayerStack a ModelConfig `m` asks for, on rows of `features` from images of
    `image_shape` ((H, W), or (C, H, W) channel-first), for `classes` classes."""
    blocks = None
    if LAYERS[m.name].blocks is not None:  # model=user: the first block sees (C, H, W) images
        example = image_chw(image_shape, features) if image_shape else (features,)
        passes_up = functools.partial(passed_shape, m)  # model.shortcuts widen inputs
        blocks = LAYERS[m.name].blocks(m, example, INITS[m.init], passes_up)
    shortcuts = stack_shortcuts(m, len(blocks) if blocks else None)
    spatial = None
    if LAYERS[m.name].spatial:
        spatial = {
            "kind": m.name,
            "in_shape": image_chw(image_shape, features),
            "channels": layer_channels(m.channels, m.depth),
            "groups": layer_groups(m, layer_channels(m.channels, m.depth), image_shape, features),
            **layer_sizes(m),
            "pooling": m.pooling,
            "norm_scope": m.norm_scope,
        }
    blackbox = None
    if m.blackbox != "none":
        blackbox = {
            "kind": m.blackbox,
            "after": m.blackbox_after,
            "step": m.blackbox_step,
            "straight_through": m.blackbox_grad == "straight_through",
        }
    stack = LayerStack(
        features,
        m.width,
        m.depth,
        activation,
        m.norm,
        spatial,
        blackbox,
        normalise_input,
        blocks=blocks,
        classes=classes,
        shortcuts=shortcuts,
        batch_norm=m.batch_norm,
        dropout=m.dropout,
    )
    if NORMALISATIONS[m.norm].class_groups:
        split_by_class(stack, classes, f"model.norm={m.norm}")
    for layer in stack.layers if blocks is None else ():  # blocks: initialised by user.py
        INITS[m.init](layer)
    return stack
