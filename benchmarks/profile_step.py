"""Where a training step's time goes: torch.profiler over a few steps of one net.

    python benchmarks/profile_step.py                          # FF, bf16, 4x2000, batch 512
    python benchmarks/profile_step.py --algo bp --precision fp32 --batch 100
    python benchmarks/profile_step.py trainer.num_threads=1     # any other ffbench override

Prints the operators by their own time, with input shapes, and the share of the step spent in
matrix products (aten::mm, addmm, bmm, convolutions forward and backward), in pooling (a conv
net's), in casts between dtypes (copies of weights and activations), in the optimizer, and in
everything else.
"""

import argparse
import sys

import torch
from torch.profiler import ProfilerActivity, profile

from ffbench.config import compose
from ffbench.experiment import (
    autocast,
    build_learner,
    configure_torch,
    make_optimizer,
    resolve_device,
)

FEATURES, CLASSES = 784, 10
# operator name -> the share it is counted in
KINDS = {
    "aten::mm": "matrix products",
    "aten::addmm": "matrix products",
    "aten::bmm": "matrix products",
    "aten::mkldnn_convolution": "matrix products",
    "aten::convolution_backward": "matrix products",  # a conv net's weight and input gradients
    "aten::max_pool2d_with_indices": "pooling",
    "aten::max_pool2d_with_indices_backward": "pooling",
    "aten::avg_pool2d": "pooling",
    "aten::avg_pool2d_backward": "pooling",
    "aten::copy_": "casts and copies",
    "aten::_fused_adam_": "optimizer",
    "aten::_fused_sgd_": "optimizer",
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--algo", default="ff", help="ff (no read-out) or bp")
    parser.add_argument("--precision", default="bf16")
    parser.add_argument("--net", default="4x2000", help="DEPTHxWIDTH")
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rows", type=int, default=15, help="operators to list")
    parser.add_argument("overrides", nargs="*", help="more ffbench overrides")
    args = parser.parse_args()
    depth, width = map(int, args.net.split("x"))
    overrides = [f"algo={args.algo}", f"trainer.precision={args.precision}"]
    overrides += [f"model.depth={depth}", f"model.width={width}"]
    if args.algo == "ff":
        overrides.append("algo.readout=false")
    cfg = compose([*overrides, *args.overrides])
    device = resolve_device(cfg.trainer.device)
    configure_torch(cfg.trainer, device)
    torch.manual_seed(0)
    learner = build_learner(cfg, FEATURES, CLASSES, (28, 28), device)
    optimizer = make_optimizer(learner.param_groups(), cfg.optimizer)
    examples = args.batch * args.steps
    x = torch.rand(examples, FEATURES, device=device)
    y = torch.randint(0, CLASSES, (examples,), device=device)
    with autocast(cfg.trainer, device):
        learner.train_epoch(x[: 2 * args.batch], y[: 2 * args.batch], optimizer, args.batch)
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            learner.train_epoch(x, y, optimizer, args.batch)
    events = prof.key_averages(group_by_input_shape=True)
    print(f"{' '.join(overrides + args.overrides)}, threads {torch.get_num_threads()}")
    print(
        events.table(sort_by="self_cpu_time_total", row_limit=args.rows, max_name_column_width=32)
    )
    total = sum(e.self_cpu_time_total for e in events)
    shares: dict[str, float] = {}
    for e in events:
        kind = KINDS.get(e.key, "everything else")
        shares[kind] = shares.get(kind, 0.0) + e.self_cpu_time_total / total
    print(f"per step: {total / args.steps / 1000:.1f} ms of operator time")
    for kind, share in sorted(shares.items(), key=lambda item: -item[1]):
        print(f"  {share:6.1%}  {kind}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
