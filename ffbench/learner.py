"""What a learning rule is to the rest of ffbench: the interface FF and BP both implement.

A learner is an `nn.Module` that owns its `LayerStack` and everything else it trains (BP's
output layer, FF's read-out), so one `state_dict()` saves and restores all of it. The
experiment builds it with `from_config`, gives `param_groups()` to the optimizer, calls
`train_epoch` once per pass and reads `predict_all` to score it; nothing else is shared.
"""

import torch
from torch import nn

from ffbench import stops
from ffbench.models import LayerStack


class Learner(nn.Module):
    stack: LayerStack
    evaluation: str
    """The prediction reported as `{split}_accuracy` (a key of predict_all)."""
    reports_each_evaluation: bool = False
    """Also report every prediction of predict_all as `{split}_accuracy_{name}`."""

    @classmethod
    def from_config(cls, cfg, num_features: int, num_classes: int, image_shape: tuple):
        """The learner the resolved config asks for, on rows of `num_features` from images of
        `image_shape` ((H, W) or (C, H, W); () if the data are not images)."""
        raise NotImplementedError

    def param_groups(self) -> list[dict]:
        """The optimizer's parameter groups (a group may set its own learning rate)."""
        return weights_and_biases(self)

    def stages(self) -> list[int | None]:
        """The layer each stage of training trains (None: all), each for trainer.epochs."""
        return [None]

    def train_epoch(
        self, x, y, optimizer: torch.optim.Optimizer, batch_size: int, layer: int | None = None
    ) -> dict[str, float]:
        """One pass over (x, y) in random minibatches; returns the epoch's mean statistics,
        `train_loss` among them."""
        raise NotImplementedError

    def predict_all(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Predicted labels of `x`, by each way this learner can predict."""
        raise NotImplementedError

    def choose(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        """Make the choices this learner makes on the validation split (x, y) before each
        evaluation there (FF's layer range: algo.predictor), and return them as metrics.
        Never called with the test split."""
        return {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The predicted label of each row of `x` by the headline evaluation: what the model
        that tracking.log_model logs predicts when MLflow loads it back."""
        return self.predict_all(x)[self.evaluation]

    def compile_step(self) -> None:
        """torch.compile the computation of a training step (trainer.compile)."""
        raise NotImplementedError


def step(optimizer: torch.optim.Optimizer) -> None:
    """Update the weights, then forget the bf16 copies of them that autocast cached during the
    step (experiment.autocast keeps them for a step: FF's read-out pass, its training pass and
    evaluation then cast each weight once, not once per pass). Every learner steps through this,
    so a stop that arrived during the step (Ctrl-C, SIGTERM, SLURM's time-limit warning) is
    acted on here, before the update, whatever swallowed its exception (stops.py)."""
    stops.check()
    optimizer.step()
    torch.clear_autocast_cache()


def micro_batches(idx: torch.Tensor, steps: int) -> list[tuple[torch.Tensor, float]]:
    """Up to `steps` parts of the minibatch `idx`, each with its share of it (gradient
    accumulation, trainer.grad_accum_steps): each part's loss weighted by its share, the
    gradients sum to the whole minibatch's while one part's graph is held at a time."""
    return [(part, len(part) / len(idx)) for part in idx.tensor_split(min(steps, len(idx)))]


def chunks(x: torch.Tensor, size: int):
    """The rows of `x`, `size` at a time: evaluation goes through this, in pieces that bound its
    memory, and a stop that arrived during a piece is acted on before the next (stops.py)."""
    for part in x.split(size):
        stops.check()
        yield part


def weights_and_biases(module: nn.Module, **options) -> list[dict]:
    """`module`'s parameters as two optimizer groups with `options`: the weights, decayed at
    the optimizer's weight_decay unless `options` set another, and the biases, never decayed
    (the reference code's weight cost is on weights only)."""
    named = list(module.named_parameters())
    weights = [p for name, p in named if not name.endswith("bias")]
    biases = [p for name, p in named if name.endswith("bias")]
    groups = [{"params": weights, **options}, {"params": biases, **options, "weight_decay": 0.0}]
    return [group for group in groups if group["params"]]
