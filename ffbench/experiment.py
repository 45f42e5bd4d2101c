"""One job, from a resolved config to its numbers: load the data, build the learner and its
optimizer, train epoch by epoch, evaluate. Nothing here logs or prints: `on_epoch` receives
each epoch's metrics and the caller decides what to do with them."""

import math
import os
import pickle
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.optim.lr_scheduler import LambdaLR

from ffbench import data as datasets
from ffbench import windows
from ffbench.errors import FFBenchError
from ffbench.flops import train_flops_per_example, train_matmul_shapes
from ffbench.learner import Learner
from ffbench.learners import LEARNERS
from ffbench.measure import PeakMemory, Stopwatch, keep_freed_memory, matmul_gflops

MATMUL_SECONDS = 3.0  # trainer.matmul_reference: how long to time the plain products


@dataclass
class Job:
    cfg: object
    device: torch.device
    data: datasets.Splits
    learner: Learner
    optimizer: torch.optim.Optimizer


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


# optimizer.name -> (OptimizerConfig -> torch class, its options, whether to use its fused
# implementation where this torch has one)
OPTIMIZERS = {
    "adam": lambda cfg: (torch.optim.Adam, {"lr": cfg.lr, "weight_decay": cfg.weight_decay}, True),
    # Not fused with momentum: torch's fused SGD cannot step, in one call, tensors that have a
    # momentum buffer and tensors that have none yet (FF's sequential schedule: a layer's first
    # step beside the read-out's hundredth); foreach can.
    "sgd": lambda cfg: (
        torch.optim.SGD,
        {"lr": cfg.lr, "momentum": cfg.momentum, "weight_decay": cfg.weight_decay},
        cfg.momentum == 0,
    ),
    # decoupled weight decay (ASGE, DeeperForward): w -= lr * weight_decay * w, not through
    # Adam's moments. Its state is per tensor, so one AdamW over every layer's tensors steps
    # each layer exactly as one AdamW per layer would (tests/unit/test_lr_schedule.py).
    "adamw": lambda cfg: (
        torch.optim.AdamW,
        {"lr": cfg.lr, "weight_decay": cfg.weight_decay},
        True,
    ),
}


def merge_equal_groups(param_groups: list[dict], defaults: dict) -> list[dict]:
    """The parameter groups with the groups whose options (over `defaults`) are equal made one:
    an optimizer pays a Python loop and a kernel launch per group and step, a tenth of a small
    net's step (with no weight decay, biases and weights need no groups of their own)."""
    merged: dict[tuple, dict] = {}
    for group in param_groups:
        options = defaults | {k: v for k, v in group.items() if k != "params"}
        key = tuple(sorted(options.items()))
        merged.setdefault(key, options | {"params": []})["params"] += list(group["params"])
    return list(merged.values())


def make_optimizer(param_groups: list[dict], cfg) -> torch.optim.Optimizer:
    """The optimizer an OptimizerConfig names; the fused implementation (one kernel for all
    tensors) wherever this torch has one for the parameters' device and the entry allows it."""
    kind, options, fused = OPTIMIZERS[cfg.name](cfg)
    param_groups = merge_equal_groups(param_groups, options)
    if fused:
        try:
            return kind(param_groups, fused=True, **options)
        except (RuntimeError, ValueError):  # no fused kernel for this device or dtype
            pass
    return kind(param_groups, **options)


def build_learner(cfg, num_features: int, num_classes: int, image_shape: tuple, device):
    """The learner the config asks for, on `device`, compiled if trainer.compile says so."""
    learner = LEARNERS[cfg.algo.name].from_config(cfg, num_features, num_classes, image_shape)
    learner = learner.to(device)
    if cfg.trainer.compile:
        learner.compile_step()
    return learner


# torch's own choice of CPU threads, before any job changed it
DEFAULT_THREADS = torch.get_num_threads()


def configure_torch(cfg, device: torch.device) -> None:
    """Process-wide torch settings from the TrainerConfig `cfg`, every one of them set by
    every job, so that no job inherits another's in a sweep that shares the process."""
    torch.set_num_threads(cfg.num_threads or DEFAULT_THREADS)
    keep_freed_memory()  # no page faults on every step's fresh tensors
    # FF's softplus gradients underflow into subnormal floats, which the CPU's matrix unit
    # handles many times slower (docs/performance.md); flushing them to zero changes no
    # value above 1e-38.
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

    It wraps a whole epoch, and caches each weight's bf16 copy until the weights change: every
    learner's optimizer step goes through learner.step, which clears the cache, so that no step
    computes with an earlier step's weights."""
    bf16 = cfg.precision == "bf16"
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16, cache_enabled=True)


def prepare(cfg, device: torch.device) -> Job:
    """Load data and build the net; `cfg` has passed config.validate. Raises on bad input."""
    splits = datasets.load(cfg.dataset)
    if cfg.trainer.batch_size > len(splits.x_train):
        raise FFBenchError(
            f"trainer.batch_size={cfg.trainer.batch_size} exceeds the {len(splits.x_train)} training "
            f"examples of {splits.name}: set trainer.batch_size={len(splits.x_train)} or less"
        )
    configure_torch(cfg.trainer, device)
    torch.manual_seed(cfg.trainer.seed)  # every job starts from the same random state
    learner = build_learner(
        cfg, splits.num_features, splits.num_classes, splits.image_shape, device
    )
    windows.plan(cfg, len(learner.stack.layers))  # algo.layer_windows fit the built layers
    optimizer = make_optimizer(learner.param_groups(), cfg.optimizer)
    return Job(cfg, device, splits.to(device), learner, optimizer)


def constant(epoch: int, epochs: int, floor: float) -> float:
    return 1.0


def linear_decay(epoch: int, epochs: int, floor: float) -> float:
    """The reference code's: 1 for the first half, then (1 + 2 (E - e)) / E in epoch e of E,
    down in equal steps of 2/E to 1/E in the last epoch."""
    return min(1.0, (1 + 2 * (epochs - epoch)) / epochs)


def cosine(epoch: int, epochs: int, floor: float) -> float:
    """Half a cosine from 1 in the first epoch towards `floor` (trainer.lr_floor), as torch's
    CosineAnnealingLR(T_max=epochs, eta_min=floor x lr) stepped once per epoch: epoch e of E
    trains at floor + (1 - floor)(1 + cos(pi (e - 1) / E)) / 2 (ASGE, DeeperForward)."""
    return floor + (1 - floor) * (1 + math.cos(math.pi * (epoch - 1) / epochs)) / 2


# trainer.lr_schedule -> multiplier of the base learning rate in epoch (1-based) of epochs,
# given trainer.lr_floor
LR_SCHEDULES = {"constant": constant, "linear_decay": linear_decay, "cosine": cosine}


def accuracies(learner: Learner, x: torch.Tensor, y: torch.Tensor, split: str) -> dict:
    """`{split}_accuracy` from the learner's headline evaluation and, for a learner that
    reports each of its evaluations (FF: goodness, readout), `{split}_accuracy_{name}`."""
    predictions = learner.predict_all(x)
    found = {name: (p == y).float().mean().item() for name, p in predictions.items()}
    metrics = {f"{split}_accuracy": found[learner.evaluation]}
    if learner.reports_each_evaluation:
        metrics |= {f"{split}_accuracy_{name}": value for name, value in found.items()}
    return metrics


def training_images(job: Job) -> torch.Tensor:
    """The training split as this pass sees it: the images themselves, or a fresh random
    variant of each (dataset.augment), for FF and BP alike; validation and test never are."""
    augment = datasets.AUGMENTATIONS[job.cfg.dataset.augment]
    if augment is None:
        return job.data.x_train
    return augment(job.data, job.cfg.dataset.crop_padding)


def training_plan(job: Job) -> list[tuple[int | tuple | None, int]]:
    """(layer to train, or the layers of its windows (algo.layer_windows), or None for all;
    epoch) for each pass over the training data."""
    windowed = windows.plan(job.cfg, len(job.learner.stack.layers))
    if windowed is not None:
        return windowed
    epochs = range(1, job.cfg.trainer.epochs + 1)
    return [(layer, epoch) for layer in job.learner.stages() for epoch in epochs]


def save_checkpoint(path: Path, job: Job, history: list[dict], seconds: tuple) -> None:
    """Everything training needs to go on after its last pass exactly as if it had not
    stopped: the learner, the optimizer, torch's random state; with the metrics of every pass
    so far (`history`, pass 1 first: those a killed process had not sent yet can be sent then)
    and the training and evaluation seconds so far. Written to a temporary file, then
    renamed: a kill leaves the previous checkpoint or this one, never half of one."""
    state = {
        "step": len(history),
        "history": history,
        "learner": job.learner.state_dict(),
        "optimizer": job.optimizer.state_dict(),
        "rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if job.device.type == "cuda" else [],
        "seconds": seconds,
    }
    partial = path.with_name(f"{path.name}.partial")
    torch.save(state, partial)
    os.replace(partial, path)


def load_checkpoint(path: Path, job: Job) -> dict:
    """Restore `job` from save_checkpoint's file; returns the checkpoint (its step, history,
    seconds) for `train` to start from."""
    try:
        state = torch.load(path, map_location=job.device, weights_only=False)
        job.learner.load_state_dict(state["learner"])
        job.optimizer.load_state_dict(state["optimizer"])
    except (OSError, RuntimeError, KeyError, EOFError, pickle.UnpicklingError) as err:
        raise FFBenchError(
            f"cannot continue from {path} ({err}): delete it, or set trainer.checkpoint=false "
            "to train from the start"
        ) from None
    torch.set_rng_state(state["rng"].cpu())
    if state["cuda_rng"]:
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    return state


def train(
    job: Job,
    on_epoch: Callable[[int, dict], None],
    memory: PeakMemory | None = None,
    checkpoint: Path | None = None,
    start: dict | None = None,
) -> dict[str, float]:
    """Train, then return the final metrics. Raises if the loss diverges.

    Every layer is trained for trainer.epochs passes over the data: at once (simultaneous,
    and BP), or one layer after the other (FF's sequential schedule, depth x epochs passes,
    `step` counting passes). Validation accuracy is measured after every trainer.eval_every
    passes and after the last, and handed to `on_epoch` with the pass's metrics; its last
    value is the run's final one, so it is not repeated here. `memory`, if given, is entered
    around each pass's training, like the stopwatch; evaluation has a stopwatch of its own.
    With `checkpoint`, every pass ends by saving there; `start`, a loaded checkpoint, skips
    the passes it holds."""
    cfg, d, learner = job.cfg.trainer, job.data, job.learner
    plan = training_plan(job)
    stopwatch = Stopwatch(job.device)  # times training only, never evaluation
    evaluation = Stopwatch(job.device)
    history = []  # every pass's metrics, for the checkpoint
    if start is not None:
        history = list(start["history"])
        stopwatch.seconds, evaluation.seconds = start["seconds"]
    done = len(history)
    schedule = LR_SCHEDULES[cfg.lr_schedule]
    factors = [schedule(epoch, cfg.epochs, cfg.lr_floor) for _, epoch in plan]
    # torch's scheduler sets every group's lr to its initial lr times the pass's factor; it
    # counts passes from 0, and one resumed after `done` passes starts at pass `done`
    scheduler = LambdaLR(
        job.optimizer, lambda index: factors[min(index, len(plan) - 1)], last_epoch=done - 1
    )
    for step, (layer, _) in enumerate(plan, start=1):
        if step <= done:
            continue
        meter = nullcontext() if memory is None else memory.stage(layer)  # layer: its stage
        with meter, stopwatch, autocast(cfg, job.device):
            x = training_images(job)
            metrics = learner.train_epoch(x, d.y_train, job.optimizer, cfg.batch_size, layer)
            del x
        if not math.isfinite(metrics["train_loss"]):
            raise FFBenchError(
                f"training diverged: train_loss is {metrics['train_loss']} at epoch {step}; "
                f"lower optimizer.lr (now {job.cfg.optimizer.lr})"
            )
        metrics["epoch_time_s"] = stopwatch.last
        metrics["lr_factor"] = factors[step - 1]
        if step % cfg.eval_every == 0 or step == len(plan):
            with evaluation, autocast(cfg, job.device):
                metrics |= learner.choose(d.x_val, d.y_val)
                metrics |= accuracies(learner, d.x_val, d.y_val, "val")
        history.append(metrics)
        if checkpoint is not None:  # before the metrics go out: a run never logs a pass twice
            save_checkpoint(checkpoint, job, history, (stopwatch.seconds, evaluation.seconds))
        on_epoch(step, metrics)
        scheduler.step()
    return final_metrics(job, len(plan), stopwatch, evaluation)


def final_metrics(job: Job, passes: int, stopwatch: Stopwatch, evaluation: Stopwatch) -> dict:
    """The trained learner's test and train accuracies (timed by `evaluation`), and the speed
    of its `passes` (timed by `stopwatch`): examples and useful FLOPs per second, and with
    trainer.matmul_reference the ratio to the matrix unit's own speed on the same products."""
    cfg, d, learner = job.cfg.trainer, job.data, job.learner
    with evaluation, autocast(cfg, job.device):
        final = accuracies(learner, d.x_test, d.y_test, "test")
        final |= accuracies(learner, d.x_train, d.y_train, "train")
    examples = passes * len(d.x_train)
    inputs = learner.stack.in_features  # the data's, plus FF's label planes if any
    useful = train_flops_per_example(job.cfg, inputs, d.num_classes, d.image_shape, learner.stack)
    useful *= examples
    final |= {
        "train_time_s": stopwatch.seconds,
        "samples_per_s": examples / stopwatch.seconds,
        "train_gflops_per_s": useful / stopwatch.seconds / 1e9,
        "eval_time_s": evaluation.seconds,
    }
    if cfg.matmul_reference:  # what the matrix unit does with the same products, right now
        shapes = train_matmul_shapes(job.cfg, inputs, d.num_classes, cfg.batch_size)
        dtype = torch.bfloat16 if cfg.precision == "bf16" else torch.float32
        final["matmul_gflops_per_s"] = matmul_gflops(shapes, job.device, MATMUL_SECONDS, dtype)
        final["matmul_ratio"] = final["train_gflops_per_s"] / final["matmul_gflops_per_s"]
    return final
