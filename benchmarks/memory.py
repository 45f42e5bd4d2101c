"""FF against BP and checkpointed BP in memory, on a deep MNIST-sized MLP (not a test).

    python benchmarks/memory.py              # depth 16, width 2000, batch 512, 784 features
    python benchmarks/memory.py --steps 1 --depth 4

Each algorithm trains a few minibatches of random data in a fresh process of its own, so
that its peak RSS holds nothing of the others. Prints the figures, the FF/BP and
FF/BP-checkpointed ratios, and whether FF's peak saved activations are at most 0.15x BP's
(exit status 1 if not).
"""

import argparse
import json
import subprocess
import sys

import torch

from ffbench.analytic import saved_activation_bytes
from ffbench.config import compose
from ffbench.experiment import build_learner, make_optimizer, resolve_device
from ffbench.measure import MB, PeakMemory, static_memory_mb

ALGOS = ("ff", "bp", "bp_ckpt")
TARGET = 0.15  # FF's peak saved activations against BP's
FEATURES = 784


def measure_one(algo: str, args) -> dict:
    device = resolve_device("auto")
    cfg = compose([f"algo={algo}", f"model.width={args.width}", f"model.depth={args.depth}"])
    torch.manual_seed(0)
    learner = build_learner(cfg, FEATURES, 10, (28, 28), device)
    optimizer = make_optimizer(learner.param_groups(), cfg.optimizer)
    x = torch.rand(args.batch * args.steps, FEATURES, device=device)
    y = torch.randint(0, 10, (len(x),), device=device)
    with PeakMemory(device, learner.parameters()) as memory:
        learner.train_epoch(x, y, optimizer, args.batch)
    return (
        memory.metrics()
        | static_memory_mb(optimizer)
        | {
            "predicted_saved_mb": saved_activation_bytes(
                algo, args.batch, args.width, args.depth, FEATURES
            )
            / MB,
            "rss_method": memory.method,
            "device": device.type,
        }
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depth", type=int, default=16)
    parser.add_argument("--width", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--steps", type=int, default=2, help="minibatches per algorithm")
    parser.add_argument("--one", choices=ALGOS, help=argparse.SUPPRESS)  # the child process
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure_one(args.one, args)))
        return 0

    results = {}
    for algo in ALGOS:
        child = [sys.executable, __file__, "--one", algo, *sys.argv[1:]]
        out = subprocess.run(child, capture_output=True, text=True, check=True).stdout
        results[algo] = json.loads(out.splitlines()[-1])

    print(
        f"depth {args.depth}, width {args.width}, batch {args.batch}, {FEATURES} features, "
        f"{args.steps} steps, device {results['ff']['device']}, "
        f"RSS by {results['ff']['rss_method']}"
    )
    keys = [k for k in results["bp"] if k.endswith("_mb")]
    print(f"{'MB':<28}" + "".join(f"{algo:>12}" for algo in ALGOS))
    for key in keys:
        print(f"{key:<28}" + "".join(f"{results[a][key]:>12.2f}" for a in ALGOS))
    ratios = [
        k
        for k in ("peak_saved_activations_mb", "peak_rss_mb", "peak_cuda_allocated_mb")
        if k in keys
    ]
    for key in ratios:
        ff = results["ff"][key]
        print(
            f"{key}: FF/BP {ff / results['bp'][key]:.3f}, "
            f"FF/BP-checkpointed {ff / results['bp_ckpt'][key]:.3f}"
        )
    ratio = results["ff"]["peak_saved_activations_mb"] / results["bp"]["peak_saved_activations_mb"]
    met = ratio <= TARGET
    print(f"target FF/BP saved activations <= {TARGET}: {'met' if met else 'MISSED'} ({ratio:.3f})")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
