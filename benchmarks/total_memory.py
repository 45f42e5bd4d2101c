"""Total tensor memory of training on the paper's net (issue 26): FF, FF at its floor
(algo.step_each_layer, simultaneous and sequential) and BP, plain and at its leanest
(checkpointed, accumulated over 4 micro-batches, both), a few Adam steps each on random
MNIST-shaped data, counted op by op (measure.LiveTensors), with the breakdown at each peak and
analytic.total_bytes' prediction beside it.

    python benchmarks/total_memory.py                      # 4 x 2000, batch 100, 784 inputs
    python benchmarks/total_memory.py --width 500 --steps 2
    python benchmarks/total_memory.py --rss ff [--no-eval]   # one algorithm per process: RSS
"""

import argparse

import torch

from ffbench import experiment
from ffbench.analytic import total_bytes
from ffbench.config import compose, validate
from ffbench.measure import MB, PARTS, PeakMemory, keep_freed_memory

SETTINGS = {
    "BP": ["algo=bp"],
    "BP checkpointed": ["algo=bp_ckpt"],
    "BP accumulated (4)": ["algo=bp", "trainer.grad_accum_steps=4"],
    "BP ckpt + accum (4)": ["algo=bp_ckpt", "trainer.grad_accum_steps=4"],
    "FF": ["algo=ff"],
    "FF floor": ["algo=ff", "algo.step_each_layer=true"],
    "FF floor, sequential": ["algo=ff", "algo.step_each_layer=true", "algo.schedule=sequential"],
}


def measure(overrides, features: int, batch: int, steps: int) -> PeakMemory:
    """The meter after `steps` minibatches of every stage (each layer in turn, if sequential)."""
    cfg = compose([*overrides, "optimizer=adam", f"trainer.batch_size={batch}"])
    validate(cfg)
    torch.manual_seed(0)
    learner = experiment.build_learner(cfg, features, 10, (features,), torch.device("cpu"))
    optimizer = experiment.make_optimizer(learner.param_groups(), cfg.optimizer)
    x, y = torch.rand(steps * batch, features), torch.randint(0, 10, (steps * batch,))
    memory = PeakMemory(torch.device("cpu"), learner.parameters(), optimizer, total=True)
    for layer in learner.stages():
        with memory:
            learner.train_epoch(x, y, optimizer, batch, layer)
    return memory


def rss(algo: str, evaluate: bool, width: int, depth: int) -> None:
    """Peak RSS and the RSS training added over 3 epochs of 1000 random examples, with a
    1000-example evaluation after each (as a run's validation) unless `evaluate` is false: run
    one algorithm per process, so that no other's memory is resident."""
    keep_freed_memory()  # as every job does (experiment.configure_torch)
    cfg = compose([f"model.width={width}", f"model.depth={depth}", f"algo={algo}"])
    torch.manual_seed(0)
    learner = experiment.build_learner(cfg, 784, 10, (784,), torch.device("cpu"))
    optimizer = experiment.make_optimizer(learner.param_groups(), cfg.optimizer)
    x, y, x_val = torch.rand(1000, 784), torch.randint(0, 10, (1000,)), torch.rand(1000, 784)
    memory = PeakMemory(torch.device("cpu"), learner.parameters(), optimizer, total=True)
    for _ in range(3):
        with memory:
            learner.train_epoch(x, y, optimizer, 100)
        if evaluate:
            learner.predict_all(x_val)
    figures = memory.metrics()
    print(
        f"{algo}, {'with' if evaluate else 'without'} evaluation: peak RSS "
        f"{figures['peak_rss_mb']:.1f} MB, RSS added {figures['rss_added_mb']:.1f} MB, "
        f"total tensors {figures['peak_total_mb']:.1f} MiB"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=2000)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--features", type=int, default=784)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--rss", choices=["ff", "bp"], help="the RSS of one algorithm instead")
    parser.add_argument("--no-eval", action="store_true", help="--rss without evaluations")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.rss:
        return rss(args.rss, not args.no_eval, args.width, args.depth)
    net = [f"model.width={args.width}", f"model.depth={args.depth}"]
    print(f"{args.depth} x {args.width}, batch {args.batch}, {args.features} inputs, Adam; MB")
    print(f"{'':22}{'total':>9}{'predicted':>10}" + "".join(f"{p[:9]:>10}" for p in PARTS))
    totals = {}
    for name, overrides in SETTINGS.items():
        cfg = compose([*net, *overrides])
        memory = measure([*net, *overrides], args.features, args.batch, args.steps)
        totals[name] = memory.tensors.peak_bytes
        predicted = total_bytes(cfg, args.features, 10, args.batch)["total"]
        parts = "".join(f"{memory.tensors.at_peak[p] / MB:10.2f}" for p in PARTS)
        row = f"{name:22}{totals[name] / MB:9.2f}{predicted / MB:10.2f}{parts}"
        print(row + f"   rss added {memory.metrics()['rss_added_mb']:.1f}")
    for name in list(SETTINGS)[1:]:
        print(f"{name} / BP: {totals[name] / totals['BP']:.3f}")


if __name__ == "__main__":
    main()
