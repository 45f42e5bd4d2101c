"""Max pooling channels-last (models.max_pool) against torch's F.max_pool2d on NCHW maps: the
training step and the evaluation of one conv net, alternated in one process, with the final
weights compared bit for bit.

    python benchmarks/pooling.py                                   # +experiment=best_ff_mnist
    python benchmarks/pooling.py +experiment=mnist_conv_bp trainer.precision=fp32

Prints each one's ms per training step and seconds per evaluation (median of the rounds) and
the ratios ours / torch's: compare ratios, not seconds (docs/performance.md).
"""

import statistics
import sys
import time

import torch
import torch.nn.functional as F

from ffbench import models
from ffbench.config import compose
from ffbench.experiment import autocast, build_learner, configure_torch, make_optimizer

FEATURES, CLASSES, BATCH, STEPS, ROUNDS = 784, 10, 128, 8, 3
POOLINGS = {"torch (NCHW)": F.max_pool2d, "ffbench (channels-last)": models.max_pool}


def one_round(cfg, pool) -> tuple[float, float, torch.Tensor]:
    """Seconds per step and per evaluation, and the weights after the steps, with `pool`."""
    models.POOLS["max"] = pool
    torch.manual_seed(0)
    learner = build_learner(cfg, FEATURES, CLASSES, (28, 28), torch.device("cpu"))
    optimizer = make_optimizer(learner.param_groups(), cfg.optimizer)
    data = torch.Generator().manual_seed(1)
    x = torch.rand(BATCH * STEPS, FEATURES, generator=data)
    y = torch.randint(0, CLASSES, (len(x),), generator=data)
    with autocast(cfg.trainer, torch.device("cpu")):
        learner.train_epoch(x[: 2 * BATCH], y[: 2 * BATCH], optimizer, BATCH)  # warm-up
        start = time.perf_counter()
        learner.train_epoch(x, y, optimizer, BATCH)
        step = (time.perf_counter() - start) / STEPS
        start = time.perf_counter()
        learner.predict_all(x, chunk=512)
        evaluation = time.perf_counter() - start
    weights = torch.cat([p.detach().float().flatten() for p in learner.parameters()])
    return step, evaluation, weights


def main() -> int:
    overrides = sys.argv[1:] or ["+experiment=best_ff_mnist"]
    cfg = compose(["trainer.num_threads=1", *overrides])
    configure_torch(cfg.trainer, torch.device("cpu"))
    rounds = {name: [] for name in POOLINGS}
    for _ in range(ROUNDS):
        for name, pool in POOLINGS.items():
            rounds[name].append(one_round(cfg, pool))
    print(" ".join(overrides), f"batch {BATCH}, one thread, median of {ROUNDS} rounds")
    medians = {}
    for name, runs in rounds.items():
        medians[name] = [statistics.median(r[i] for r in runs) for i in (0, 1)]
        step, evaluation = medians[name]
        print(f"  {name:24} {step * 1000:7.1f} ms a step, {evaluation:6.3f} s an evaluation")
    (torch_step, torch_eval), (ours_step, ours_eval) = medians.values()
    print(
        f"  ours / torch's: step {ours_step / torch_step:.2f}, evaluation {ours_eval / torch_eval:.2f}"
    )
    same = all(torch.equal(a[2], b[2]) for a, b in zip(*rounds.values(), strict=True))
    print(f"  the same weights after training, bit for bit: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
