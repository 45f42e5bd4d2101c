"""One job, from a resolved config to its numbers: check the config, load the data, build the
net and the learning rule, train epoch by epoch, evaluate. Nothing here logs or prints:
`on_epoch` receives each epoch's metrics and the caller decides what to do with them."""

import math
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass

import torch

from ffbench import data as datasets
from ffbench.activations import make_activation
from ffbench.bp import Backprop
from ffbench.errors import FFBenchError
from ffbench.ff import ForwardForward, goodness_units, input_features
from ffbench.flops import train_flops_per_example
from ffbench.goodness import default_theta
from ffbench.measure import PeakMemory, Stopwatch
from ffbench.models import make_stack


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


def make_optimizer(param_groups: list[dict], cfg) -> torch.optim.Optimizer:
    """Adam or SGD; the fused implementation (one kernel for all tensors, ~3x faster than the
    default on CPU) wherever this torch has one for the parameters' device."""
    if cfg.name == "adam":
        kind, options = torch.optim.Adam, {"lr": cfg.lr, "weight_decay": cfg.weight_decay}
    else:
        kind = torch.optim.SGD
        options = {"lr": cfg.lr, "momentum": cfg.momentum, "weight_decay": cfg.weight_decay}
    try:
        return kind(param_groups, fused=True, **options)
    except (RuntimeError, ValueError):  # no fused kernel for this device or dtype
        return kind(param_groups, **options)


def build_algorithm(cfg, num_features: int, num_classes: int, image_shape: tuple, device):
    """The net, its learning rule and its optimizer, as the config asks."""
    m = cfg.model
    activation = make_activation(cfg.activation)
    inputs = input_features(cfg, num_features, num_classes, image_shape)
    stack = make_stack(m, inputs, image_shape, activation).to(device)
    if cfg.algo.name == "ff":
        theta = cfg.algo.theta
        if theta is None:  # per layer: a spatial layer's units depend on its position
            units = goodness_units(stack, cfg.goodness)
            theta = [default_theta(cfg.goodness.name, u, m.norm) for u in units]
        algorithm = ForwardForward(stack, num_classes, image_shape, cfg.algo, cfg.goodness, theta)
    else:
        checkpoint = cfg.algo.name == "bp_ckpt"
        algorithm = Backprop(stack, num_classes, checkpoint, cfg.trainer.grad_accum_steps)
    if cfg.trainer.compile:
        algorithm.compile()
    groups = algorithm.param_groups(readout_lr=cfg.algo.readout_lr)
    algorithm.optimizer = make_optimizer(groups, cfg.optimizer)
    return algorithm


def compose_config(overrides=()):
    """The config `ffbench` would run with these overrides, for scripts and tests."""
    from hydra import compose, initialize_config_module

    from ffbench.config import register_schemas

    register_schemas()
    with initialize_config_module(config_module="ffbench.conf", version_base="1.3"):
        return compose("config", overrides=list(overrides))


def configure_torch(cfg, device: torch.device) -> None:
    """Process-wide torch settings from the TrainerConfig `cfg`."""
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    # FF's softplus gradients underflow into subnormal floats, which the CPU's matrix unit
    # handles many times slower: flushing them to zero halved the time of FF's weight
    # gradients in `make bench`, and changes no value above 1e-38.
    torch.set_flush_denormal(True)
    if cfg.precision == "tf32" and device.type != "cuda":
        raise FFBenchError(
            f"trainer.precision=tf32 needs a CUDA device (this job runs on {device.type}): "
            "set trainer.precision=fp32 or bf16"
        )
    torch.backends.cuda.matmul.allow_tf32 = cfg.precision == "tf32"
    torch.backends.cudnn.allow_tf32 = cfg.precision == "tf32"


def autocast(cfg, device: torch.device):
    """bf16 autocast for trainer.precision=bf16 (matrix products only), else a no-op.

    It wraps a whole epoch, so its cache of bf16 weight copies must be off: with it on, every
    step of the epoch would compute with the weights as they were at the first step."""
    bf16 = cfg.precision == "bf16"
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16, cache_enabled=False)


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
    configure_torch(cfg.trainer, device)
    torch.manual_seed(cfg.trainer.seed)  # every job starts from the same random state
    algorithm = build_algorithm(
        cfg, splits.num_features, splits.num_classes, splits.image_shape, device
    )
    return Job(cfg, device, splits.to(device), algorithm)


def lr_factor(schedule: str, epoch: int, epochs: int) -> float:
    """Multiplier of the base learning rate in `epoch` (1-based) of `epochs`. linear_decay:
    1 for the first half, then down in equal steps to 1/epochs of it in the last epoch."""
    if schedule == "constant":
        return 1.0
    return min(1.0, 2.0 * (epochs - epoch + 1) / epochs)


def accuracies(algorithm, x: torch.Tensor, y: torch.Tensor, split: str) -> dict[str, float]:
    """`{split}_accuracy` from the headline evaluation and, for FF, `{split}_accuracy_{name}`
    for each of its evaluations (goodness, readout) beside it."""
    predictions = algorithm.predict_all(x)
    found = {name: (p == y).float().mean().item() for name, p in predictions.items()}
    metrics = {f"{split}_accuracy": found[algorithm.evaluation]}
    if isinstance(algorithm, ForwardForward):
        metrics |= {f"{split}_accuracy_{name}": value for name, value in found.items()}
    return metrics


def training_plan(cfg) -> list[tuple[int | None, int]]:
    """(layer to train or None for all, epoch) for each pass over the training data."""
    sequential = cfg.algo.name == "ff" and cfg.algo.schedule == "sequential"
    layers = range(cfg.model.depth) if sequential else [None]
    return [(layer, epoch) for layer in layers for epoch in range(1, cfg.trainer.epochs + 1)]


def train(
    job: Job, on_epoch: Callable[[int, dict], None], memory: PeakMemory | None = None
) -> dict[str, float]:
    """Train, then return the final metrics. Raises if the loss diverges.

    Every layer is trained for trainer.epochs passes over the data: at once (simultaneous,
    and BP), or one layer after the other (FF's sequential schedule, depth x epochs passes,
    `step` counting passes). Validation accuracy is measured after each pass and handed to
    `on_epoch`; its last value is the run's final one, so it is not repeated here. `memory`,
    if given, is entered around each pass's training, like the stopwatch."""
    cfg, d, algorithm = job.cfg.trainer, job.data, job.algorithm
    plan = training_plan(job.cfg)
    stopwatch = Stopwatch(job.device)  # times training only, never evaluation
    for step, (layer, epoch) in enumerate(plan, start=1):
        factor = lr_factor(cfg.lr_schedule, epoch, cfg.epochs)
        for group in algorithm.optimizer.param_groups:
            group["lr"] = group.setdefault("initial_lr", group["lr"]) * factor
        with memory or nullcontext(), stopwatch, autocast(cfg, job.device):
            metrics = algorithm.train_epoch(d.x_train, d.y_train, cfg.batch_size, layer)
        if not math.isfinite(metrics["train_loss"]):
            raise FFBenchError(
                f"training diverged: train_loss is {metrics['train_loss']} at epoch {step}; "
                f"lower optimizer.lr (now {job.cfg.optimizer.lr})"
            )
        metrics["epoch_time_s"] = stopwatch.last
        metrics["lr_factor"] = factor
        with autocast(cfg, job.device):
            metrics |= accuracies(algorithm, d.x_val, d.y_val, "val")
        on_epoch(step, metrics)
    with autocast(cfg, job.device):
        final = accuracies(algorithm, d.x_test, d.y_test, "test")
        final |= accuracies(algorithm, d.x_train, d.y_train, "train")
    examples = len(plan) * len(d.x_train)
    inputs = input_features(job.cfg, d.num_features, d.num_classes, d.image_shape)
    useful = train_flops_per_example(job.cfg, inputs, d.num_classes, d.image_shape)
    useful *= examples
    return final | {
        "train_time_s": stopwatch.seconds,
        "samples_per_s": examples / stopwatch.seconds,
        "train_gflops_per_s": useful / stopwatch.seconds / 1e9,
    }
