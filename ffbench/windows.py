"""Per-layer training windows (algo.layer_windows, CwComp): each FF layer trains only in its
own window of epochs, and a pass trains the layers whose windows hold its epoch.

CwComp's MNIST recipe trains every layer from the first epoch and stops them one after the
other (ends 2, 3, 4, 5): the lower layers settle first, and the upper ones go on learning
from inputs that no longer change. Its `Fast` recipe staggers the starts too. A layer out of
its window, below the top layer in training, runs forward only (without a graph), as the
frozen layers of the sequential schedule do; one above it does not run at all.
"""

from ffbench.errors import FFBenchError


def layer_windows(windows, depth: int, epochs: int, schedule: str) -> list[tuple[int, int]]:
    """algo.layer_windows as one (first, last) epoch per hidden layer, 1-based and inclusive,
    checked: within trainer.epochs, and every epoch trains some layer."""
    example = "[" + ",".join(f"[1,{last}]" for last in range(2, depth + 2)) + "]"
    try:
        pairs = [(int(first), int(last)) for first, last in windows]
    except (TypeError, ValueError):
        pairs = []
    if len(pairs) != depth or any(not 1 <= a <= b <= epochs for a, b in pairs):
        raise FFBenchError(
            f"algo.layer_windows={windows} is not one [first, last] epoch per hidden layer "
            f"within trainer.epochs={epochs}: set a list of model.depth={depth} pairs, e.g. "
            f"{example} with trainer.epochs={depth + 1}"
        )
    idle = [e for e in range(1, epochs + 1) if not trained_in(pairs, e)]
    if idle:
        raise FFBenchError(
            f"algo.layer_windows leaves epoch {idle[0]} without a layer to train: widen a "
            f"window to cover it, or set trainer.epochs={idle[0] - 1}"
        )
    if schedule == "sequential":
        raise FFBenchError(
            "algo.layer_windows says which layers train in which epoch, which the sequential "
            "schedule says too: set algo.schedule=simultaneous"
        )
    return pairs


def trained_in(windows: list[tuple[int, int]], epoch: int) -> tuple[int, ...]:
    """The hidden layers (0-based) whose windows hold `epoch`."""
    return tuple(index for index, (first, last) in enumerate(windows) if first <= epoch <= last)


def plan(cfg, depth: int | None = None) -> list[tuple[tuple[int, ...], int]] | None:
    """(layers trained, epoch) of each pass over the training data under algo.layer_windows,
    or None without windows (or for a learner that ignores them: BP). `depth`: the hidden
    layers of the built stack (user blocks: their count), else model.depth."""
    from ffbench.config import ignored  # the schema imports this module's checks lazily too

    a = cfg.algo
    if ignored(cfg, "algo.layer_windows"):
        return None
    depth = depth or cfg.model.depth
    windows = layer_windows(a.layer_windows, depth, cfg.trainer.epochs, a.schedule)
    return [(trained_in(windows, epoch), epoch) for epoch in range(1, cfg.trainer.epochs + 1)]
