"""One job, from a resolved config to its numbers: check the config, load the data, build the
net and the learning rule, train epoch by epoch, evaluate. Nothing here logs or prints:
`on_epoch` receives each epoch's metrics and the caller decides what to do with them."""

import math
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass

import torch

from ffbench import data as datasets
from ffbench.bp import Backprop
from ffbench.config import FFBenchError
from ffbench.ff import ForwardForward
from ffbench.goodness import default_theta
from ffbench.measure import PeakMemory, Stopwatch
from ffbench.models import LayerStack


@dataclass
class Job:
    cfg: object
    device: torch.device
    data: datasets.Splits
    algorithm: ForwardForward | Backprop


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    available = {
        "cpu": True,
        "cuda": torch.cuda.is_available(),
        "mps": torch.backends.mps.is_available(),
    }
    if not available[name]:
        raise FFBenchError(
            f"trainer.device={name} but torch sees no {name} device: set trainer.device=auto or cpu"
        )
    return torch.device(name)


def make_optimizer(params, cfg) -> torch.optim.Optimizer:
    if cfg.name == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def prepare(cfg, device: torch.device) -> Job:
    """Load data and build the net; `cfg` has passed config.validate. Raises on bad input."""
    splits = datasets.load(cfg.dataset)
    if cfg.trainer.batch_size > len(splits.x_train):
        raise FFBenchError(
            f"trainer.batch_size={cfg.trainer.batch_size} exceeds the {len(splits.x_train)} training "
            f"examples of {splits.name}: set trainer.batch_size={len(splits.x_train)} or less"
        )
    if cfg.algo.name == "ff" and splits.num_features <= splits.num_classes:
        raise FFBenchError(f"{splits.name} has too few features to write a label into for FF")
    if cfg.trainer.num_threads:
        torch.set_num_threads(cfg.trainer.num_threads)
    torch.manual_seed(cfg.trainer.seed)  # every job starts from the same random state
    m = cfg.model
    stack = LayerStack(splits.num_features, m.width, m.depth, cfg.activation.name, m.norm).to(
        device
    )
    if cfg.algo.name == "ff":
        theta = cfg.algo.theta
        if theta is None:
            theta = default_theta(cfg.goodness.name, m.width, m.norm)
        algorithm = ForwardForward(stack, splits.num_classes, cfg.algo, cfg.goodness.name, theta)
    else:
        checkpoint = cfg.algo.name == "bp_ckpt"
        accum = cfg.trainer.grad_accum_steps
        algorithm = Backprop(stack, splits.num_classes, checkpoint, accum)
    algorithm.optimizer = make_optimizer(algorithm.model.parameters(), cfg.optimizer)
    return Job(cfg, device, splits.to(device), algorithm)


def accuracy(algorithm, x: torch.Tensor, y: torch.Tensor) -> float:
    return (algorithm.predict(x) == y).float().mean().item()


def train(
    job: Job, on_epoch: Callable[[int, dict], None], memory: PeakMemory | None = None
) -> dict[str, float]:
    """Train for the configured epochs; return the final metrics. Raises if the loss diverges.

    Validation accuracy is measured every epoch and passed to `on_epoch`; its last value is
    the run's final `val_accuracy`, so it is not repeated in the returned metrics. `memory`,
    if given, is entered around each epoch's training, like the stopwatch."""
    cfg, d, algorithm = job.cfg.trainer, job.data, job.algorithm
    stopwatch = Stopwatch(job.device)  # times training only, never evaluation
    for epoch in range(1, cfg.epochs + 1):
        with memory or nullcontext(), stopwatch:
            metrics = algorithm.train_epoch(d.x_train, d.y_train, cfg.batch_size)
        if not math.isfinite(metrics["train_loss"]):
            raise FFBenchError(
                f"training diverged: train_loss is {metrics['train_loss']} at epoch {epoch}; "
                f"lower optimizer.lr (now {job.cfg.optimizer.lr})"
            )
        metrics["epoch_time_s"] = stopwatch.last
        metrics["val_accuracy"] = accuracy(algorithm, d.x_val, d.y_val)
        on_epoch(epoch, metrics)
    return {
        "train_accuracy": accuracy(algorithm, d.x_train, d.y_train),
        "test_accuracy": accuracy(algorithm, d.x_test, d.y_test),
        "train_time_s": stopwatch.seconds,
        "samples_per_s": cfg.epochs * len(d.x_train) / stopwatch.seconds,
    }
