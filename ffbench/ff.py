"""Forward-Forward (Hinton, 2022).

Supervised recipe: positive data is an image with its true label written into its first
pixels; negative data is the same image with a wrong label. Unsupervised recipe (`hybrid`):
positive data is a real image, negative data a hybrid of two images mixed through a smooth
random mask, and a linear read-out is the classifier.

Each layer pushes its score (signed goodness, see goodness.py) above theta for positives and
below it for negatives. A layer's input is detached and normalised, so no gradient and no
goodness crosses layers, and each layer's loss is back-propagated right after its forward
pass: only the current layer's activations are ever held for a backward pass.

The learner is assembled from parts, each chosen by one config key from a registry, so that
a new variant is a new entry rather than a new branch:

- how the label enters the input: ff_data.LABEL_INPUTS (algo.label_input);
- how negative data are made: ff_data.NEGATIVES (algo.negatives);
- each layer's objective: goodness.GOODNESS (goodness.name) and goodness.LOSSES (algo.loss);
- a competitive layer's class goodness: CLASS_GOODNESS (algo.class_goodness);
- how the prediction combines the layers' goodness: PREDICTORS (algo.predictor);
- PeerNorm (algo.peer_norm) and the linear Readout (algo.readout).

Besides the combined prediction, every layer predicts from its own goodness alone (`layer0`,
`layer1`, ...: accuracy per layer, logged after each evaluation).
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ffbench.activations import NORMALISATIONS, make_activation
from ffbench.data import minibatches
from ffbench.errors import FFBenchError
from ffbench.ff_data import LABEL_INPUTS, NEGATIVES
from ffbench.goodness import GOODNESS, LOSSES, default_theta, goodness_scale, make_goodness
from ffbench.learner import Learner, chunks, micro_batches, step, weights_and_biases
from ffbench.models import (
    INITS,
    LayerStack,
    as_map,
    layer_channels,
    make_stack,
    positions,
    split_by_class,
)

PEER_MOMENTUM = 0.9  # smoothing of the per-unit mean activity in peer normalisation


# Each layer's objective: goodness of the whole layer or per position, threshold, loss.


def _per_position(stack: LayerStack, goodness_cfg) -> bool:
    return getattr(goodness_cfg, "spatial", "whole") == "position" and stack.shapes is not None


def goodness_units(stack: LayerStack, goodness_cfg) -> list[int]:
    """Units each layer's goodness is taken over: the layer's, or one position's channels."""
    if _per_position(stack, goodness_cfg):
        return [shape[0] for shape in stack.shapes]
    return stack.out_features


def per_position_goodness(goodness, channels: int):
    """`goodness` of each position's channel vector: flat channel-major rows -> (N, positions)."""

    def g(a: torch.Tensor) -> torch.Tensor:
        return goodness(positions(a, channels))

    return g


def make_layer_goodness(stack: LayerStack, goodness_cfg) -> list:
    """One goodness function per layer (`split` counts its feature units per layer)."""
    units = goodness_units(stack, goodness_cfg)
    if not _per_position(stack, goodness_cfg):
        return [make_goodness(goodness_cfg, u) for u in units]
    return [per_position_goodness(make_goodness(goodness_cfg, c), c) for c in units]


def label_input(cfg, num_features: int, num_classes: int, image_shape):
    """How the label enters the input (ff_data.LABEL_INPUTS), or None: unsupervised negatives
    or a loss that takes no label in the input (cwc)."""
    a = cfg.algo
    if NEGATIVES[a.negatives].unsupervised or LABEL_INPUTS[a.label_input] is None:
        return None
    norm = NORMALISATIONS[cfg.model.norm]
    return LABEL_INPUTS[a.label_input](
        num_classes, a.label_strength, image_shape, num_features, norm
    )


def thresholds(cfg, stack: LayerStack) -> list[float]:
    """Each layer's theta, in goodness units: algo.theta, else the goodness's default for the
    layer's units and the size of its normalised input (per layer: a spatial layer's units
    depend on its position)."""
    if cfg.algo.theta is not None:
        return [cfg.algo.theta] * len(stack.layers)
    units = goodness_units(stack, cfg.goodness)
    g, norm, activation = cfg.goodness.name, cfg.model.norm, cfg.activation.name
    sizes = zip(units, stack.norm_sizes, strict=True)
    return [default_theta(g, u, norm, activation, inputs=n) for u, n in sizes]


def layer_losses(cfg, stack: LayerStack, thetas: list[float]) -> list:
    """Each layer's FF loss (algo.loss) at its theta in score units, with the per-unit divisor
    of its goodness (SymBa compares goodness per unit)."""
    scales = [goodness_scale(cfg.goodness.name, u) for u in goodness_units(stack, cfg.goodness)]
    loss = LOSSES[cfg.algo.loss].make
    return [loss(cfg.algo, t, scale) for t, scale in zip(thetas, scales, strict=True)]


class PeerNorm(nn.Module):
    """Peer normalisation as in Hinton's reference code: no unit stays off, none dominates.

    Each unit j keeps a running mean activity m_j over positive data (started at 0.5,
    m = 0.9 m + 0.1 batch mean), and the gradient of the layer's loss with respect to unit
    j's *input* gains `coefficient * (m_j - mean_k m_k)` per example, averaged over the
    positives. Added at the input rather than through the activation, it reaches units a ReLU
    has switched off for good, pulling the quiet ones up and the busy ones down. The means
    are buffers, saved with the learner."""

    START = 0.5  # every unit's mean activity before the first minibatch (reference code)

    def __init__(self, units: list[int], coefficient: float):
        super().__init__()
        self.coefficient = coefficient
        for index, n in enumerate(units):
            self.register_buffer(f"mean{index}", torch.full((n,), self.START))

    @classmethod
    def of(cls, stack: LayerStack, coefficient: float) -> "PeerNorm | None":
        """The peer normalisation of `stack`'s layers (algo.peer_norm), or None at 0."""
        units = [layer.out_features for layer in stack.layers]
        return cls(units, coefficient) if coefficient > 0 else None

    def surrogate(self, index: int, z_pos: torch.Tensor, a_pos: torch.Tensor) -> torch.Tensor:
        """Update layer `index`'s running means with the positives' activities `a_pos`, and
        return a term whose gradient with respect to their pre-activations `z_pos` (N, units)
        is `coefficient * (m_j - mean(m)) / N`: add it to the loss before backward. Its value
        means nothing (it is not logged)."""
        mean = getattr(self, f"mean{index}")
        batch_mean = a_pos.detach().mean(dim=0, dtype=torch.float32)
        mean.mul_(PEER_MOMENTUM).add_(batch_mean, alpha=1 - PEER_MOMENTUM)
        push = self.coefficient * (mean - mean.mean())
        return (z_pos * push.to(z_pos.dtype)).sum(dim=1, dtype=torch.float32).mean()


class Readout(nn.Linear):
    """Linear softmax classifier on the normalised activities of the evaluated layers, with no
    gradient into the FF layers."""

    @classmethod
    def of(cls, cfg, stack: LayerStack, eval_from: int, num_classes: int) -> "Readout":
        """The read-out of `stack`'s layers from `eval_from` up (zero if model.init says so)."""
        readout = cls(sum(stack.out_features[eval_from:]), num_classes)
        if INITS[cfg.model.init].zero_readout:
            nn.init.zeros_(readout.weight)
            nn.init.zeros_(readout.bias)
        return readout

    @classmethod
    def on_scores(cls, cfg, num_classes: int) -> "Readout":
        """algo.predictor=softmax's head: a softmax layer on the top layer's class scores."""
        head = cls(num_classes, num_classes)
        if INITS[cfg.model.init].zero_readout:
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)
        return head

    @torch.no_grad()
    def set_gradient(self, features: torch.Tensor, y: torch.Tensor, share: float = 1.0):
        """Add the cross-entropy gradient, in closed form, to the gradients and return the
        loss: autograd would keep `features` (every evaluated layer's activities) for a
        backward pass, which is exactly the memory FF exists to avoid. `share`: this
        micro-batch's part of the minibatch (trainer.grad_accum_steps). Float32 throughout,
        even under bf16 autocast: the gradient must match the parameter's dtype."""
        with torch.autocast(features.device.type, enabled=False):
            logits = self(features)
            error = torch.softmax(logits, dim=1)
            error[torch.arange(len(y), device=y.device), y] -= 1.0
            error /= len(y)  # d(mean cross-entropy) / d(logits)
            error *= share
            for p, grad in ((self.weight, error.T @ features), (self.bias, error.sum(dim=0))):
                p.grad = grad if p.grad is None else p.grad.add_(grad)
            return F.cross_entropy(logits, y)


def update(optimizer: torch.optim.Optimizer, free: bool) -> None:
    """learner.step; with `free`, the gradients it used are dropped at once (algo.step_each_layer:
    at most one layer's gradients are alive)."""
    step(optimizer)
    if free:
        optimizer.zero_grad(set_to_none=True)


def forget_state(optimizer: torch.optim.Optimizer, module: nn.Module, keep: nn.Module) -> None:
    """Drop the optimizer state (Adam's moments, SGD's momentum) of `module`'s parameters but
    `keep`'s. In FF's sequential schedule the layers below the one in training are frozen for
    good and those above have not started: their state is never read again, or not yet."""
    kept = {id(p) for p in keep.parameters()}
    for p in module.parameters():
        if id(p) not in kept:
            optimizer.state.pop(p, None)


class Predictions:
    """How a trained FF net predicts (ForwardForward's, apart from how it learns): by the
    goodness of each candidate label, its layers' combined as algo.predictor says and each
    layer's alone, and by the read-out if one was trained."""

    @torch.no_grad()
    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The read-out's input: normalised activities of the evaluated layers, computed
        without a graph, so no read-out gradient reaches the FF layers. Each layer's columns
        are written as the layer comes: one layer's activities are alive at a time, not every
        layer's, their normalised copies and the concatenation at once (docs/memory.md)."""
        if self.labels is not None:
            x = self.labels.neutral(x)
        found, start = None, 0
        for index, a in enumerate(self.stack.outputs(x)):
            if index < self.eval_from:
                continue
            z = self.stack.normalise(index, a)
            if found is None:  # in normalise's dtype, as torch.cat's would be
                found = z.new_empty(len(z), sum(self.stack.out_features[self.eval_from :]))
            found[:, start : start + z.shape[1]] = z
            start += z.shape[1]
            del a, z
        return found

    def set_predictor(self, cfg, num_classes: int) -> None:
        """algo.predictor and its parts: the layer range (a buffer: saved with the learner,
        "sum"'s layers until the first choice) or the softmax head (competitive losses)."""
        self.predictor = PREDICTORS[cfg.algo.predictor]
        if self.predictor.chosen_on_validation:
            top = len(self.stack.layers) - 1
            self.register_buffer("layer_range", torch.tensor([self.eval_from, top]))
        if self.predictor.head and not self.competitive:
            raise FFBenchError(
                f"algo.predictor={cfg.algo.predictor} learns from the top layer's class scores "
                f"in training, which algo.loss={cfg.algo.loss} does not compute: set a "
                f"competitive loss ({', '.join(n for n, kind in LOSSES.items() if kind.competitive)})"
            )
        self.head = Readout.on_scores(cfg, num_classes) if self.predictor.head else None

    @torch.no_grad()
    def layer_goodness(self, x: torch.Tensor) -> torch.Tensor:
        """Every layer's goodness for every candidate label: (layers, N, classes).

        One batched pass over all labels: each example is repeated once per label.
        """
        n, c = len(x), self.num_classes
        labels = torch.arange(c, device=x.device).repeat(n)
        h = self.labels.with_label(x.repeat_interleave(c, dim=0), labels)
        per_layer = []
        for index, a in enumerate(self.stack.outputs(h)):  # one layer's 10 copies at a time
            g = self.goodnesses[index](a)
            per_layer.append((g if g.dim() == 1 else g.sum(dim=1)).view(n, c))  # positions summed
        return torch.stack(per_layer)

    def label_goodness(self, x: torch.Tensor) -> torch.Tensor:
        """Goodness summed over the evaluated layers for every candidate label: (N, classes)."""
        return self.layer_goodness(x)[self.eval_from :].sum(dim=0)

    def layer_scores(self, x: torch.Tensor, chunk: int = 1000) -> torch.Tensor:
        """Every layer's score (signed goodness) of every class, (layers, N, classes)."""
        return torch.cat([self.sign * self.layer_goodness(p) for p in chunks(x, chunk)], dim=1)

    @property
    def predicts_by_goodness(self) -> bool:  # labels in the input, or class goodness
        return self.labels is not None or self.competitive

    @torch.no_grad()
    def predict_all(self, x: torch.Tensor, chunk: int = 1000) -> dict[str, torch.Tensor]:
        """Predicted labels by the read-out (if trained), and if labels are used by goodness,
        the layers' scores combined as algo.predictor says, and by each layer's alone."""
        self.eval()
        predictions = {}
        if self.readout is not None:
            predictions["readout"] = torch.cat(
                [self.readout(self.features(p)).argmax(1) for p in chunks(x, chunk)]
            )
        if self.predicts_by_goodness:
            scores = self.layer_scores(x, chunk)
            predictions["goodness"] = self.predictor.combine(self, scores).argmax(1)
            predictions |= {f"layer{i}": s.argmax(1) for i, s in enumerate(scores)}
        return predictions

    @torch.no_grad()
    def choose(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        """With algo.predictor=layer_range, choose on (x, y), the validation split, the
        contiguous range of layers whose summed scores predict best, and return it (0-based
        layer indices) as metrics."""
        if not self.predictor.chosen_on_validation:
            return {}
        self.eval()
        first, last = best_range(self.layer_scores(x), y)
        self.layer_range.copy_(torch.tensor([first, last]))
        return {"layer_range_first": first, "layer_range_last": last}


def best_range(scores: torch.Tensor, y: torch.Tensor) -> tuple[int, int]:
    """(first, last), inclusive: the contiguous range of layers whose scores (layers, N,
    classes), summed, predict `y` best. Longer ranges are tried first, and of equal
    accuracies the first tried wins: the longest, then the lowest."""
    depth, best, found = len(scores), -1.0, (0, len(scores) - 1)
    for length in range(depth, 0, -1):
        for first in range(depth - length + 1):
            summed = scores[first : first + length].sum(dim=0)
            accuracy = (summed.argmax(dim=1) == y).float().mean().item()
            if accuracy > best:
                best, found = accuracy, (first, first + length - 1)
    return found


@dataclass(frozen=True)
class Predictor:
    """How FF's goodness prediction combines its layers (algo.predictor): `combine(learner,
    scores)` turns every layer's score of every class, (layers, N, classes), into one
    (N, classes). `head`: a softmax layer trained on the top layer's class scores alongside
    the layers (needs class scores in training: a competitive loss); `chosen_on_validation`:
    its range of layers is chosen on the validation split at every evaluation (choose)."""

    combine: Callable
    head: bool = False
    chosen_on_validation: bool = False


def _summed_range(ff, scores: torch.Tensor) -> torch.Tensor:
    first, last = ff.layer_range.tolist()
    return scores[first : last + 1].sum(dim=0)


PREDICTORS = {
    # the evaluated layers' scores summed (algo.eval_skip_first)
    "sum": Predictor(lambda ff, scores: scores[ff.eval_from :].sum(dim=0)),
    # DeeperForward: the range chosen on validation; before the first choice, "sum"'s layers
    "layer_range": Predictor(_summed_range, chosen_on_validation=True),
    # CwComp's softmax predictor, here on the top layer's class scores
    "softmax": Predictor(lambda ff, scores: ff.head(scores[-1]), head=True),
}


class ForwardForward(Predictions, Learner):
    end_to_end = False  # each layer learns on its own, from detached inputs (flops, analytic)
    reports_each_evaluation = True  # goodness and read-out side by side
    competitive = False  # the classes compete within each layer (ChannelwiseCompetitive)

    def __init__(
        self, cfg, stack: LayerStack, labels, thetas: list[float], num_classes: int, image_shape
    ):
        """`cfg` is the resolved config; `labels` how the label enters the input (None for
        unsupervised negatives); `thetas` one threshold per layer, in goodness units;
        `image_shape` that of the data ((H, W) or (C, H, W); () if not images)."""
        super().__init__()
        self.num_classes, self.image_shape = num_classes, image_shape
        self.stack, self.labels = stack, labels
        self.blur_steps = cfg.algo.hybrid_blur_steps
        self.negatives = NEGATIVES[cfg.algo.negatives].make
        depth = len(stack.layers)
        # Per layer: the goodness (of the whole layer, or per position: (batch, positions)),
        # theta in score units and the loss. All layers of an MLP get the same ones.
        self.goodnesses = make_layer_goodness(stack, cfg.goodness)
        self.sign = -1.0 if cfg.goodness.inverted else 1.0
        self.thetas = [self.sign * t for t in thetas]
        self.losses = layer_losses(cfg, stack, self.thetas)
        self.peer = PeerNorm.of(stack, cfg.algo.peer_norm)
        self.sequential = cfg.algo.schedule == "sequential"
        self.step_each_layer = cfg.algo.step_each_layer
        self.accum_steps = cfg.trainer.grad_accum_steps  # micro-batches per minibatch
        # The first hidden layer mostly sees the label pixels themselves, so the paper leaves
        # it out of the evaluation (goodness sum and read-out) when there are layers above it.
        self.eval_from = 1 if cfg.algo.eval_skip_first and depth > 1 else 0
        # trained only if asked for: it costs a label-free forward pass
        self.readout = (
            Readout.of(cfg, stack, self.eval_from, num_classes) if cfg.algo.readout else None
        )
        a = cfg.algo  # the read-out's and the softmax head's optimizer options:
        self.classifier_options = {"lr": a.readout_lr, "weight_decay": a.readout_weight_decay}
        self.evaluation = cfg.algo.evaluation
        self.set_predictor(cfg, num_classes)

    @classmethod
    def from_config(cls, cfg, num_features: int, num_classes: int, image_shape: tuple):
        labels = label_input(cfg, num_features, num_classes, image_shape)
        inputs = num_features if labels is None else labels.in_features(num_features)
        normalise_input = labels is None or not labels.normalises_image
        activation = make_activation(cfg.activation)
        stack = make_stack(cfg.model, inputs, image_shape, activation, normalise_input, num_classes)
        learner = ChannelwiseCompetitive if LOSSES[cfg.algo.loss].competitive else cls
        return learner(cfg, stack, labels, thresholds(cfg, stack), num_classes, image_shape)

    def param_groups(self) -> list[dict]:
        groups = weights_and_biases(self.stack)
        for classifier in (self.readout, self.head):
            if classifier is not None:
                groups += weights_and_biases(classifier, **self.classifier_options)
        return groups

    def stages(self) -> list[int | None]:
        return list(range(len(self.stack.layers))) if self.sequential else [None]

    def score(self, a: torch.Tensor, index: int = 0) -> torch.Tensor:
        return self.sign * self.goodnesses[index](a)

    def compile_step(self) -> None:
        # One compiled graph per layer index and batch shape: allow one per layer, and more.
        torch._dynamo.config.cache_size_limit = max(64, 4 * len(self.stack.layers))
        self.layer_objective = torch.compile(self.layer_objective)

    def layer_objective(self, index: int, h: torch.Tensor, n: int, y: torch.Tensor) -> tuple:
        """Output, scores, FF loss and the objective to back-propagate (the loss plus peer
        normalisation's term) of layer `index` on [positives; negatives] (n positives, of
        labels y). One function, so that trainer.compile can fuse its element-wise work."""
        z = self.stack.preactivation(index, h)
        u = self.stack.activation(z)
        a = self.stack.output(index, u)  # pooled and batch-normalised if asked (models.py)
        s = self.score(a, index)  # float32 even if the layer ran in bf16 (goodness.py)
        loss = self.losses[index](s[:n], s[n:], y)
        objective = loss
        if self.peer is not None:
            objective = loss + self.peer.surrogate(index, z[:n], u[:n])
        return a, s, loss, objective

    @torch.no_grad()
    def layer_stats(self, index: int, s: torch.Tensor, n: int, y: torch.Tensor) -> dict:
        """Mean goodness of positives and of negatives, and separation: the share of examples
        on the right side of theta."""
        g = self.sign * s  # the goodness itself, without computing it again
        theta = self.thetas[index]
        separation = ((s[:n] > theta).float().mean() + (s[n:] < theta).float().mean()) / 2
        pos, neg = g[:n].mean(), g[n:].mean()
        return {"goodness_pos": pos, "goodness_neg": neg, "separation": separation}

    def train_step(self, x, y, optimizer, layers: range, share: float = 1.0) -> dict:
        """Adds the gradients of a minibatch, or of its micro-batch that is `share` of it, for
        the `layers` given (all, or one in the sequential schedule). Returns each one's loss,
        mean goodness of positives and of negatives and separation (the share of examples on
        the right side of theta) and the read-out's loss, as tensors (no device sync)."""
        n = len(x)
        step_now = self.step_each_layer and share == 1.0  # each layer's gradient is whole
        # The read-out's input for this step, before any update (None without a read-out).
        features = self.features(x) if self.readout is not None else None
        pos, neg = self.negatives(self, x, y, features)
        h = torch.cat([pos, neg])  # one pass for positives and negatives together
        del pos, neg
        stats, kept = {}, {}  # kept: outputs a shortcut above reads (model.shortcuts)
        if self.readout is not None:  # its gradient first: its input is freed before the layers
            stats["readout_loss"] = self.readout.set_gradient(features, y, share)
            del features
            if step_now:
                update(optimizer, free=True)
        for index in range(layers[-1] + 1):
            if index not in layers:  # a frozen lower layer (sequential schedule)
                with torch.no_grad():
                    h = self.stack.pass_up(index, self.stack.layer(index, h), kept)
                continue
            a, s, loss, objective = self.layer_objective(index, h, n, y)
            h = self.stack.pass_up(index, a.detach(), kept)  # the next layer's input
            if self.head is not None and index == len(self.stack.layers) - 1:
                stats["head_loss"] = self.head.set_gradient(s[:n].detach(), y, share)
            # Backward now frees this layer's graph before the next layer is computed.
            (objective * share).backward()
            if step_now:  # this layer's update, and its gradients gone, now
                update(optimizer, free=True)
            stats[f"layer{index}_loss"] = loss.detach()
            for name, value in self.layer_stats(index, s, n, y).items():
                stats[f"layer{index}_{name}"] = value
        return stats

    def train_epoch(self, x, y, optimizer, batch_size: int, layer: int | None = None) -> dict:
        self.train()
        layers = trained_layers(layer, len(self.stack.layers))
        if self.step_each_layer and isinstance(layer, int):  # frozen layers, those to come
            forget_state(optimizer, self.stack, keep=self.stack.layers[layer])
        totals, batches = {}, 0
        for idx in minibatches(len(x), batch_size, x.device):
            optimizer.zero_grad(set_to_none=True)  # the last step's are dead: not held on
            parts = micro_batches(idx, self.accum_steps)
            for part, share in parts:
                for name, value in self.train_step(
                    x[part], y[part], optimizer, layers, share
                ).items():
                    totals[name] = totals.get(name, 0.0) + value * share
            # Gradients of different layers never mix: one step after all layers (in one fused
            # call) equals step_each_layer's step per layer, taken unless micro-batches add up.
            if not (self.step_each_layer and len(parts) == 1):
                update(optimizer, free=self.step_each_layer)
            batches += 1
        means = (torch.stack(list(totals.values())) / batches).tolist()  # one host sync
        metrics = dict(zip(totals, means, strict=True))
        metrics["train_loss"] = sum(metrics[f"layer{i}_loss"] for i in layers)
        return metrics


def trained_layers(layer: int | tuple | None, depth: int) -> range | tuple:
    """The layers a pass trains (train_epoch's `layer`): all of the `depth` (None), one (a
    stage of the sequential schedule), or those whose windows hold its epoch (windows.py)."""
    if layer is None:
        return range(depth)
    return range(layer, layer + 1) if isinstance(layer, int) else layer


def class_goodness(goodness, num_classes: int, scale: float):
    """`goodness` of each class's group of units, per unit: flat rows (N, units) -> (N, classes).
    Rows are channel-major, so class k's channels, with all their positions, are one slice."""

    def g(a: torch.Tensor) -> torch.Tensor:
        return goodness(a.view(len(a), num_classes, -1)) / scale

    return g


def group_goodness(ff, cfg, num_classes: int) -> list:
    """CwComp, DeeperForward: each layer's channels (an MLP's units) split into one group per
    class; class k's goodness is the goodness per unit of group k (sumsq: the mean square over
    its channels and positions; mean: their mean activity)."""
    split_by_class(ff.stack, num_classes, f"algo.loss={cfg.algo.loss}")
    per_class = [n // num_classes for n in ff.stack.out_features]
    return [
        class_goodness(
            make_goodness(cfg.goodness, n), num_classes, goodness_scale(cfg.goodness.name, n)
        )
        for n in per_class
    ]


def patch_goodness(ff, index: int, shape: tuple, patches: int, unit: Callable):
    """Layer `index`'s class goodness by a fixed projection: each channel's `unit` (its square,
    for sumsq) averaged over each of patches x patches regions of its map (adaptive average
    pooling), times the buffer `projection{index}`: flat rows (N, C*H*W) -> (N, classes)."""

    def g(a: torch.Tensor) -> torch.Tensor:
        maps = unit(a.float()).view(len(a), *shape)
        pooled = F.adaptive_avg_pool2d(maps, patches).flatten(1)
        return pooled @ getattr(ff, f"projection{index}")

    return g


def projected_goodness(ff, cfg, num_classes: int) -> list:
    """ASGE: class goodness from spatial patches through a fixed random matrix, N(0, 1/classes)
    entries, drawn once (a buffer: never trained, saved with the learner). A layer's channels
    need not split by class. An MLP's units are channels of a 1x1 map (one patch)."""
    stack, name = ff.stack, cfg.goodness.name
    unit = GOODNESS[name].unit
    if unit is None:
        summed = ", ".join(n for n, kind in GOODNESS.items() if kind.unit is not None)
        raise FFBenchError(
            f"algo.class_goodness=projection averages each unit's part of the goodness over "
            f"patches, and goodness={name} is not a sum over units: choose goodness={summed}"
        )
    depth = len(stack.layers)
    shapes = [as_map(shape) for shape in stack.shapes or [(n,) for n in stack.out_features]]
    patches = (
        layer_channels(cfg.algo.patches, depth, "algo.patches") if stack.shapes else [1] * depth
    )
    goodnesses = []
    for index, ((c, h, w), p) in enumerate(zip(shapes, patches, strict=True)):
        if p > min(h, w):
            raise FFBenchError(
                f"algo.patches={cfg.algo.patches} asks for {p}x{p} patches of the {h}x{w} map "
                f"of hidden layer {index + 1}: set at most {min(h, w)} for that layer (a list "
                "gives each layer its own)"
            )
        projection = torch.randn(c * p * p, num_classes) / num_classes**0.5
        ff.register_buffer(f"projection{index}", projection)
        goodnesses.append(patch_goodness(ff, index, (c, h, w), p, unit))
    return goodnesses


# algo.class_goodness -> (learner, config, classes) -> one class goodness function per layer
CLASS_GOODNESS = {"groups": group_goodness, "projection": projected_goodness}


class ChannelwiseCompetitive(ForwardForward):
    """Channel-wise competitive FF (CwComp: Papachristodoulou et al., AAAI 2024), algo.loss=cwc.

    No label in the input and no negative data: each layer scores every class, and is trained
    on its own by cross-entropy over its class goodnesses. The class goodness
    (algo.class_goodness) is that of one channel group per class (CwComp; with goodness=mean,
    DeeperForward's mean activity), or patch goodness through a fixed random projection
    (ASGE). The prediction combines the layers' class goodnesses (algo.predictor): one pass,
    not one per label. Layers stay detached from each other, as in every FF variant.
    """

    competitive = True

    def __init__(self, cfg, stack, labels, thetas, num_classes, image_shape):
        super().__init__(cfg, stack, labels, thetas, num_classes, image_shape)
        self.goodnesses = CLASS_GOODNESS[cfg.algo.class_goodness](self, cfg, num_classes)

    @torch.no_grad()
    def layer_stats(self, index: int, s: torch.Tensor, n: int, y: torch.Tensor) -> dict:
        """Mean goodness of the true class (pos) and of the other classes (neg), and
        separation: the share of examples whose true class scores highest in this layer."""
        g = self.sign * s
        true = F.one_hot(y, self.num_classes).bool()
        return {
            "goodness_pos": g[true].mean(),
            "goodness_neg": g[~true].mean(),
            "separation": (s.argmax(dim=1) == y).float().mean(),
        }

    @torch.no_grad()
    def layer_goodness(self, x: torch.Tensor) -> torch.Tensor:
        """Every layer's class goodness, (layers, N, classes), in one pass."""
        layers = zip(self.goodnesses, self.stack.outputs(x), strict=True)
        return torch.stack([g(a) for g, a in layers])
