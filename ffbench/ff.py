"""Forward-Forward (Hinton, 2022).

Supervised recipe: positive data is an image with its true label written into its first
pixels; negative data is the same image with a wrong label. Unsupervised recipe (`hybrid`):
positive data is a real image, negative data a hybrid of two images mixed through a smooth
random mask, and a linear read-out is the classifier.

Each layer pushes its score (signed goodness, see goodness.py) above theta for positives and
below it for negatives. A layer's input is detached and normalised, so no gradient and no
goodness crosses layers, and each layer's loss is back-propagated right after its forward
pass: only the current layer's activations are ever held for a backward pass.
"""

import torch
import torch.nn.functional as F
from torch import nn

from ffbench.data import minibatches
from ffbench.goodness import make_goodness, make_loss
from ffbench.models import LayerStack, positions

PEER_MOMENTUM = 0.9  # smoothing of the per-unit mean activity in peer normalisation


def embed_labels(
    x: torch.Tensor, labels: torch.Tensor, num_classes: int, strength: float, channels: int = 1
):
    """Copy of x whose first `num_classes` pixels of each of its `channels` planes (grey: the
    first features) hold the one-hot label times `strength`: every channel carries the label."""
    x = x.clone()
    planes = x.view(len(x), channels, -1)
    planes[:, :, :num_classes] = 0.0
    planes[torch.arange(len(x), device=x.device), :, labels] = strength
    return x


def embed_neutral(x: torch.Tensor, num_classes: int, channels: int = 1) -> torch.Tensor:
    """Copy of x with every label pixel (of every channel) at 1 / classes: no label, for the
    read-out."""
    x = x.clone()
    x.view(len(x), channels, -1)[:, :, :num_classes] = 1.0 / num_classes
    return x


def label_plane_size(image_shape: tuple) -> int:
    """Pixels of one label plane (algo.label_input=planes): one image plane, or 1 feature
    when the data have no image shape."""
    return image_shape[0] * image_shape[1] if len(image_shape) == 2 else 1


def input_features(cfg, num_features: int, num_classes: int, image_shape: tuple) -> int:
    """Inputs of the first layer: the data's features, plus FF's label planes if any."""
    if cfg.algo.name == "ff" and cfg.algo.label_input == "planes":
        return num_features + num_classes * label_plane_size(image_shape)
    return num_features


def random_wrong_labels(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """A label drawn uniformly from the wrong ones: it never equals the true label."""
    shift = torch.randint(1, num_classes, labels.shape, device=labels.device)
    return (labels + shift) % num_classes


def sample_wrong_labels(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """A wrong label drawn with probability softmax(scores), the true label excluded: the
    labels the model itself finds most plausible are the hardest negatives."""
    scores = scores.masked_fill(F.one_hot(labels, scores.shape[1]).bool(), float("-inf"))
    return torch.multinomial(torch.softmax(scores, dim=1), 1).squeeze(1)


_BLUR = torch.tensor([0.25, 0.5, 0.25])


def hybrid_masks(n: int, image_shape: tuple, blur_steps: int, device) -> torch.Tensor:
    """Smooth random 0/1 masks (n, pixels): random bits blurred `blur_steps` times with
    [1/4, 1/2, 1/4] in both directions, then thresholded at 0.5."""
    mask = (torch.rand(n, 1, *image_shape, device=device) < 0.5).float()
    across = _BLUR.to(device).view(1, 1, 1, 3)
    for _ in range(blur_steps):
        mask = F.conv2d(F.pad(mask, (1, 1, 0, 0), mode="replicate"), across)
        mask = F.conv2d(F.pad(mask, (0, 0, 1, 1), mode="replicate"), across.transpose(2, 3))
    return (mask > 0.5).float().view(n, -1)


def hybrid_images(
    x: torch.Tensor, image_shape: tuple, blur_steps: int, channels: int = 1
) -> torch.Tensor:
    """Each image mixed with the next one of the (shuffled) batch through a smooth mask:
    realistic short-range statistics, wrong long-range shape. Colour images (channel-first
    rows) use the same mask in every channel."""
    mask = hybrid_masks(len(x), image_shape, blur_steps, x.device).repeat(1, channels)
    return mask * x + (1 - mask) * x.roll(1, dims=0)


def _per_position(stack: LayerStack, goodness_cfg) -> bool:
    return getattr(goodness_cfg, "spatial", "whole") == "position" and stack.shapes is not None


def goodness_units(stack: LayerStack, goodness_cfg) -> list[int]:
    """Units each layer's goodness is taken over: the layer's, or one position's channels."""
    if _per_position(stack, goodness_cfg):
        return [shape[0] for shape in stack.shapes]
    return [layer.out_features for layer in stack.layers]


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


class ForwardForward:
    def __init__(
        self,
        stack: LayerStack,
        num_classes: int,
        image_shape: tuple,
        cfg,
        goodness_cfg,
        theta: float | list[float],
    ):
        """`cfg` is the AlgoConfig, `goodness_cfg` the GoodnessConfig; `theta` is resolved:
        one for every layer, or one per layer (default thetas follow each layer's units)."""
        self.model = stack
        self.num_classes = num_classes
        self.image_shape = image_shape
        self.cfg = cfg
        self.supervised = cfg.negatives != "hybrid"
        depth = len(stack.layers)
        # Per layer: the goodness (of the whole layer, or per position: (batch, positions)),
        # theta in score units and the loss. All layers of an MLP get the same ones.
        self.goodnesses = make_layer_goodness(stack, goodness_cfg)
        self.sign = -1.0 if goodness_cfg.inverted else 1.0
        thetas = theta if isinstance(theta, list | tuple) else [theta] * depth
        self.thetas = [self.sign * t for t in thetas]
        self.losses = [make_loss(cfg, t) for t in self.thetas]
        self.running_mean = [None] * depth  # peer normalisation state
        # The first hidden layer mostly sees the label pixels themselves, so the paper leaves
        # it out of the evaluation (goodness sum and read-out) when there are layers above it.
        self.eval_from = 1 if cfg.eval_skip_first and depth > 1 else 0
        device = stack.layers[0].weight.device
        self.readout = None  # trained only if asked for: it costs a label-free forward pass
        if cfg.readout:
            evaluated = sum(layer.out_features for layer in stack.layers[self.eval_from :])
            self.readout = nn.Linear(evaluated, num_classes).to(device)
        self.evaluation = cfg.evaluation
        self.optimizer = None  # set by the caller, over param_groups()

    def param_groups(self, readout_lr: float) -> list[dict]:
        groups = [{"params": list(self.model.parameters())}]
        if self.readout is not None:
            groups.append({"params": list(self.readout.parameters()), "lr": readout_lr})
        return groups

    @property
    def plane_size(self) -> int:
        return label_plane_size(self.image_shape)

    def channels(self, x: torch.Tensor) -> int:
        """Colour planes of the channel-first input rows (1 for grey images): the label is
        written into each plane."""
        if len(self.image_shape) != 2 or x.shape[1] % self.plane_size:
            return 1
        return x.shape[1] // self.plane_size

    def with_label(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """x with `labels` written in, as algo.label_input says."""
        c, strength = self.num_classes, self.cfg.label_strength
        if self.cfg.label_input == "planes":
            one_hot = F.one_hot(labels, c).to(x.dtype) * strength
            return torch.cat([x, one_hot.repeat_interleave(self.plane_size, dim=1)], dim=1)
        return embed_labels(x, labels, c, strength, self.channels(x))

    def without_label(self, x: torch.Tensor) -> torch.Tensor:
        """x with every label input at 1 / classes: no label, for the read-out."""
        c = self.num_classes
        if self.cfg.label_input == "planes":
            return torch.cat([x, x.new_full((len(x), c * self.plane_size), 1.0 / c)], dim=1)
        return embed_neutral(x, c, self.channels(x))

    def score(self, a: torch.Tensor, index: int = 0) -> torch.Tensor:
        return self.sign * self.goodnesses[index](a)

    def compile(self) -> None:
        # One compiled graph per layer index and batch shape: allow one per layer, and more.
        torch._dynamo.config.cache_size_limit = max(64, 4 * len(self.model.layers))
        self.layer_objective = torch.compile(self.layer_objective)

    def layer_objective(self, index: int, h: torch.Tensor, n: int) -> tuple:
        """Activities, scores and FF loss of layer `index` on [positives; negatives] (n each).
        One function, so that trainer.compile can fuse its element-wise work."""
        a = self.model.layer(index, h)
        s = self.score(a.float(), index)  # goodness in float32 even if the layer ran in bf16
        return a, s, self.losses[index](s[:n], s[n:])

    def _negative_data(self, x: torch.Tensor, y: torch.Tensor, features: torch.Tensor) -> tuple:
        if not self.supervised:
            blur = self.cfg.hybrid_blur_steps
            return x, hybrid_images(x, self.image_shape, blur, self.channels(x))
        if self.cfg.negatives == "hard_label":
            # As in the reference code: the read-out's softmax on the neutral pass, one pass
            # rather than one per label.
            with torch.no_grad():
                wrong = sample_wrong_labels(self.readout(features), y)
        else:
            wrong = random_wrong_labels(y, self.num_classes)
        return self.with_label(x, y), self.with_label(x, wrong)

    def _peer_loss(self, index: int, a_pos: torch.Tensor) -> torch.Tensor:
        """Push each unit's running mean activity towards the layer's mean: no dead units."""
        mean = a_pos.mean(dim=0)
        previous = self.running_mean[index]
        if previous is not None:
            mean = PEER_MOMENTUM * previous.detach() + (1 - PEER_MOMENTUM) * mean
        self.running_mean[index] = mean
        return self.cfg.peer_norm * (mean.mean() - mean).pow(2).mean()

    def train_step(self, x: torch.Tensor, y: torch.Tensor, layers: range) -> torch.Tensor:
        """One minibatch; trains the `layers` given (all, or one in the sequential schedule).

        Returns statistics: one row (loss, mean positive goodness, mean negative goodness,
        separation) per trained layer, then the read-out's loss (0 without a read-out).
        """
        n = len(x)
        # The read-out's input for this step, before any update (None without a read-out).
        features = self.features(x) if self.readout is not None else None
        pos, neg = self._negative_data(x, y, features)
        h = torch.cat([pos, neg])  # one pass for positives and negatives together
        self.optimizer.zero_grad(set_to_none=True)
        rows = []
        for index in range(layers[-1] + 1):
            if index not in layers:  # a frozen lower layer (sequential schedule)
                with torch.no_grad():
                    h = self.model.layer(index, h)
                continue
            a, s, loss = self.layer_objective(index, h, n)
            if self.cfg.peer_norm > 0:
                loss = loss + self._peer_loss(index, a[:n])
            # Backward now frees this layer's graph before the next layer is computed.
            loss.backward()
            h = a.detach()
            with torch.no_grad():
                g = self.sign * s  # the goodness itself, without computing it again
                theta = self.thetas[index]
                separation = ((s[:n] > theta).float().mean() + (s[n:] < theta).float().mean()) / 2
                rows.append(torch.stack([loss, g[:n].mean(), g[n:].mean(), separation]).detach())
        readout_loss = torch.zeros((), device=x.device)
        if self.readout is not None:
            readout_loss = self._readout_gradient(features, y)
        # Gradients of different layers never mix, so one step after all layers equals a
        # step per layer, and lets the optimizer update every tensor in one fused call.
        self.optimizer.step()
        return torch.cat([torch.stack(rows).flatten(), readout_loss.detach().view(1)])

    @torch.no_grad()
    def _readout_gradient(self, features: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Cross-entropy gradient of the linear read-out, in closed form: autograd would keep
        `features` (every evaluated layer's activities) for a backward pass, which is exactly
        the memory FF exists to avoid. Float32 throughout, even under bf16 autocast: the
        gradient must match the parameter's dtype."""
        with torch.autocast(features.device.type, enabled=False):
            logits = self.readout(features)
            error = torch.softmax(logits, dim=1)
            error[torch.arange(len(y), device=y.device), y] -= 1.0
            error /= len(y)  # d(mean cross-entropy) / d(logits)
            self.readout.weight.grad = error.T @ features
            self.readout.bias.grad = error.sum(dim=0)
            return F.cross_entropy(logits, y)

    def train_epoch(self, x, y, batch_size: int, layer: int | None = None) -> dict[str, float]:
        """One pass over (x, y); `layer` trains only that layer (sequential schedule)."""
        self.model.train()
        layers = range(len(self.model.layers)) if layer is None else range(layer, layer + 1)
        total, batches = 0.0, 0
        for idx in minibatches(len(x), batch_size, x.device):
            total = total + self.train_step(x[idx], y[idx], layers)
            batches += 1
        values = (total / batches).tolist()  # the epoch's only host synchronisation
        readout_loss = values.pop()
        metrics = {"readout_loss": readout_loss} if self.readout is not None else {}
        for i, index in enumerate(layers):
            loss, g_pos, g_neg, separation = values[4 * i : 4 * i + 4]
            metrics |= {
                f"layer{index}_loss": loss,
                f"layer{index}_goodness_pos": g_pos,
                f"layer{index}_goodness_neg": g_neg,
                f"layer{index}_separation": separation,
            }
        metrics["train_loss"] = sum(metrics[f"layer{i}_loss"] for i in layers)
        return metrics

    @torch.no_grad()
    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The read-out's input: normalised activities of the evaluated layers, computed
        without a graph, so no read-out gradient reaches the FF layers."""
        if self.supervised:
            x = self.without_label(x)
        activities = self.model(x)[self.eval_from :]
        return torch.cat([self.model.norm(a.float()) for a in activities], dim=1)

    @torch.no_grad()
    def label_goodness(self, x: torch.Tensor) -> torch.Tensor:
        """Goodness summed over the evaluated layers for every candidate label: (N, classes).

        One batched pass over all labels: each example is repeated once per label.
        """
        n, c = len(x), self.num_classes
        labels = torch.arange(c, device=x.device).repeat(n)
        h = self.with_label(x.repeat_interleave(c, dim=0), labels)
        total = torch.zeros(n * c, device=x.device)
        for index, a in enumerate(self.model(h)):
            if index >= self.eval_from:
                g = self.goodnesses[index](a.float())
                total += g if g.dim() == 1 else g.sum(dim=1)  # per position: summed
        return total.view(n, c)

    @torch.no_grad()
    def predict_all(self, x: torch.Tensor, chunk: int = 1000) -> dict[str, torch.Tensor]:
        """Predicted labels by every evaluation that applies (goodness needs labels)."""
        self.model.eval()
        parts = x.split(chunk)
        predictions = {}
        if self.readout is not None:
            predictions["readout"] = torch.cat(
                [self.readout(self.features(p)).argmax(1) for p in parts]
            )
        if self.supervised:
            predictions["goodness"] = torch.cat(
                [(self.sign * self.label_goodness(p)).argmax(1) for p in parts]
            )
        return predictions
