"""Total tensor memory of training on the paper's net (issue 26): FF, FF at its floor
(algo.step_each_layer, simultaneous and sequential) and BP, a few Adam steps each on random
MNIST-shaped data, counted op by op (measure.LiveTensors), with the breakdown at each peak and
analytic.total_bytes' prediction beside it.

    python benchmarks/total_memory.py                      # 4 x 2000, batch 100, 784 inputs
    python benchmarks/total_memory.py --width 500 --steps 2
"""

import argparse

import torch

from ffbench import experiment
from ffbench.analytic import total_bytes
from ffbench.config import compose, validate
from ffbench.measure import MB, PARTS, PeakMemory

SETTINGS = {
    "BP": ["algo=bp"],
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=2000)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--features", type=int, default=784)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
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
