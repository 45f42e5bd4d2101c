"""Forward-Forward, the supervised recipe of Hinton (2022).

Positive data is an image with its true label written into its first pixels; negative data
is the same image with a wrong label. Each layer pushes its goodness above `theta` for
positives and below it for negatives. A layer's input is detached and normalised, so no
gradient and no goodness crosses layers, and only the current layer's activations are kept
for its backward pass. All layers are updated on every minibatch ("simultaneous").
"""

import torch

from ffbench.data import minibatches
from ffbench.goodness import GOODNESS, LOSSES
from ffbench.models import LayerStack


def embed_labels(x: torch.Tensor, labels: torch.Tensor, num_classes: int, strength: float):
    """Copy of x whose first `num_classes` features are the one-hot label times `strength`."""
    x = x.clone()
    x[:, :num_classes] = 0.0
    x[torch.arange(len(x), device=x.device), labels] = strength
    return x


def random_wrong_labels(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """A label drawn uniformly from the wrong ones: it never equals the true label."""
    shift = torch.randint(1, num_classes, labels.shape, device=labels.device)
    return (labels + shift) % num_classes


NEGATIVES = {"random_label": random_wrong_labels}


class ForwardForward:
    def __init__(self, stack: LayerStack, num_classes: int, cfg, goodness: str, theta: float):
        """`cfg` is the AlgoConfig; `theta` is already resolved (see goodness.default_theta)."""
        self.model = stack
        self.num_classes = num_classes
        self.goodness = GOODNESS[goodness]
        self.loss = LOSSES[cfg.loss]
        self.negatives = NEGATIVES[cfg.negatives]
        self.theta = theta
        self.strength = cfg.label_strength
        depth = len(stack.layers)
        # The first hidden layer mostly sees the label pixels themselves, so the paper leaves
        # it out of the evaluation sum when there are layers above it.
        self.eval_from = 1 if cfg.eval_skip_first and depth > 1 else 0
        self.optimizer = None  # set by the caller, over self.model.parameters()

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """One minibatch through every layer; returns per-layer statistics (layers, 4)."""
        n = len(x)
        pos = embed_labels(x, y, self.num_classes, self.strength)
        neg = embed_labels(x, self.negatives(y, self.num_classes), self.num_classes, self.strength)
        h = torch.cat([pos, neg])  # one pass for positives and negatives together
        self.optimizer.zero_grad(set_to_none=True)
        stats = []
        for index in range(len(self.model.layers)):
            a = self.model.layer(index, h)
            g = self.goodness(a)
            loss = self.loss(g[:n], g[n:], self.theta)
            # Backward now frees this layer's graph before the next layer is computed.
            loss.backward()
            h = a.detach()
            with torch.no_grad():
                g_pos, g_neg = g[:n], g[n:]
                separation = (
                    (g_pos > self.theta).float().mean() + (g_neg < self.theta).float().mean()
                ) / 2
                stats.append(torch.stack([loss.detach(), g_pos.mean(), g_neg.mean(), separation]))
        # Gradients of different layers never mix, so one step after all layers equals a
        # step per layer, and lets the optimizer update every tensor in one fused call.
        self.optimizer.step()
        return torch.stack(stats)

    def train_epoch(self, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> dict[str, float]:
        self.model.train()
        total, batches = 0.0, 0
        for idx in minibatches(len(x), batch_size, x.device):
            total = total + self.train_step(x[idx], y[idx])
            batches += 1
        per_layer = (total / batches).tolist()  # the epoch's only host synchronisation
        metrics = {"train_loss": sum(row[0] for row in per_layer)}
        for i, (loss, g_pos, g_neg, sep) in enumerate(per_layer):
            metrics |= {
                f"layer{i}_loss": loss,
                f"layer{i}_goodness_pos": g_pos,
                f"layer{i}_goodness_neg": g_neg,
                f"layer{i}_separation": sep,
            }
        return metrics

    @torch.no_grad()
    def label_goodness(self, x: torch.Tensor) -> torch.Tensor:
        """Goodness summed over the evaluated layers for every candidate label: (N, classes).

        One batched pass over all labels: each example is repeated once per label.
        """
        n, c = len(x), self.num_classes
        labels = torch.arange(c, device=x.device).repeat(n)
        h = embed_labels(x.repeat_interleave(c, dim=0), labels, c, self.strength)
        total = torch.zeros(n * c, device=x.device)
        for index, a in enumerate(self.model(h)):
            if index >= self.eval_from:
                total += self.goodness(a)
        return total.view(n, c)

    @torch.no_grad()
    def predict(self, x: torch.Tensor, chunk: int = 1000) -> torch.Tensor:
        self.model.eval()
        return torch.cat([self.label_goodness(part).argmax(1) for part in x.split(chunk)])
