"""Backpropagation baseline: the same layer stack plus a linear output layer, trained end to
end with cross-entropy. Same activation, normalisation, width, depth and optimizer as FF.

Two ways to make BP cheaper in memory, so that FF is compared with the best BP and not the
naive one: per-layer gradient checkpointing (`algo=bp_ckpt`: only each layer's input is kept,
the layer is recomputed during backward) and gradient accumulation over micro-batches.
"""

import torch
import torch.nn.functional as F

from ffbench.activations import make_activation
from ffbench.data import minibatches
from ffbench.learner import Learner, chunks, micro_batches, step
from ffbench.models import Classifier, LayerStack, make_stack


class Backprop(Learner):
    evaluation = "output"
    end_to_end = True  # gradients through every layer from the output layer (flops, analytic)
    checkpoint = False  # per-layer gradient checkpointing (CheckpointedBackprop)

    def __init__(
        self,
        stack: LayerStack,
        num_classes: int,
        init: str,
        checkpoint: bool = False,
        accum_steps: int = 1,
    ):
        """`init` (model.init, a models.INITS name) initialises the output layer like the stack."""
        super().__init__()
        self.net = Classifier(stack, num_classes, init, checkpoint)
        self.accum_steps = accum_steps

    @property
    def stack(self) -> LayerStack:
        return self.net.stack

    @classmethod
    def from_config(cls, cfg, num_features: int, num_classes: int, image_shape: tuple):
        activation = make_activation(cfg.activation)
        stack = make_stack(cfg.model, num_features, image_shape, activation, classes=num_classes)
        return cls(stack, num_classes, cfg.model.init, cls.checkpoint, cfg.trainer.grad_accum_steps)

    def objective(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy of the net on (x, y); trainer.compile compiles this function."""
        return F.cross_entropy(self.net(x), y)

    def compile_step(self) -> None:
        self.objective = torch.compile(self.objective)

    def train_epoch(self, x, y, optimizer, batch_size: int, layer: int | None = None) -> dict:
        """BP always trains every layer, so `layer` must be None."""
        self.train()
        total_loss, batches = 0.0, 0
        for idx in minibatches(len(x), batch_size, x.device):
            optimizer.zero_grad(set_to_none=True)
            for part, share in micro_batches(idx, self.accum_steps):
                loss = self.objective(x[part], y[part]) * share
                loss.backward()
                total_loss = total_loss + loss.detach()
            step(optimizer)
            batches += 1
        return {"train_loss": (total_loss / batches).item()}

    @torch.no_grad()
    def predict_all(self, x: torch.Tensor, chunk: int = 10000) -> dict[str, torch.Tensor]:
        self.eval()
        return {"output": torch.cat([self.net(part).argmax(1) for part in chunks(x, chunk)])}


class CheckpointedBackprop(Backprop):
    """algo=bp_ckpt: BP with per-layer gradient checkpointing."""

    checkpoint = True
