"""Training speed against what this machine's matrix unit can do, in one process (make bench).

1. Measures matmul throughput on the very products each net/batch needs (float32; bfloat16
   for the bf16 rows).
2. Times FF and BP training epochs and FF's goodness evaluation on MNIST-shaped data, for
   nets 2x500 and 4x2000 at batches 100 and 512, then the speed options (torch.compile,
   bf16 autocast) on 4x2000.
3. Counts their useful FLOPs from the architecture (ffbench/flops.py states the formulas).
4. Prints a table and writes JSON: seconds per epoch, samples/s, achieved GFLOP/s and the
   ratio to the matmul throughput of the same shapes; also the whole-process overhead of a
   default `ffbench` run (wall time minus training time) and the import time inside it.

    python benchmarks/speed.py               # everything (about 10 minutes on 2 CPU cores)
    python benchmarks/speed.py --no-options  # without the compile and bf16 rows

Timings are noisy on shared machines: read the ratios, which are measured in one run.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from mlflow.tracking import MlflowClient
from rich.console import Console
from rich.table import Table

from ffbench.config import compose
from ffbench.experiment import (
    autocast,
    build_learner,
    configure_torch,
    make_optimizer,
    resolve_device,
)
from ffbench.flops import goodness_eval_flops_per_example, train_flops_per_example

FEATURES, CLASSES = 784, 10
NETS = [(2, 500), (4, 2000)]  # (depth, width)
BATCHES = [100, 512]
# (row name, algo, overrides). `ff` is the formula: random negatives, forward and
# weight gradient of positives and negatives; `ff+readout` is the default config, whose
# label-free read-out pass counts as useful because the config asks for it.
ALGOS = [
    ("ff", "ff", ["algo.readout=false"]),
    ("ff+readout", "ff", []),
    ("bp", "bp", []),
]
OPTIONS = [  # on 4x2000 at both batch sizes
    ("compile", ["trainer.compile=true"]),
    ("bf16", ["trainer.precision=bf16"]),
]


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_gflops(shapes, device, seconds: float, dtype=torch.float32) -> float:
    """Achieved GFLOP/s of the products (m, k) @ (k, n) in `shapes`, run in turn."""
    pairs = [
        (torch.rand(m, k, device=device, dtype=dtype), torch.rand(k, n, device=device, dtype=dtype))
        for m, k, n in shapes
    ]
    flops = sum(2 * m * k * n for m, k, n in shapes)
    for a, b in pairs:  # warm-up
        a @ b
    sync(device)
    rounds, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for a, b in pairs:
            a @ b
        rounds += 1
        sync(device)
    return rounds * flops / (time.perf_counter() - start) / 1e9


def training_shapes(cfg, batch: int) -> list[tuple[int, int, int]]:
    """The products of one training step: forward and weight gradient (FF: 2 x batch rows,
    plus the label-free forward pass if it trains a read-out; BP: input gradients too)."""
    depth, width, ff = cfg.model.depth, cfg.model.width, cfg.algo.name == "ff"
    rows = 2 * batch if ff else batch
    shapes = []
    for fan_in in [FEATURES] + [width] * (depth - 1):
        shapes += [(rows, fan_in, width), (fan_in, rows, width)]
        if ff and cfg.algo.readout:
            shapes.append((batch, fan_in, width))
        if not ff and fan_in != FEATURES:
            shapes.append((rows, width, fan_in))  # input gradient
    return shapes


def row(what, cfg, batch, examples, seconds, flops, reference) -> dict:
    return {
        "what": what,
        "net": f"{cfg.model.depth}x{cfg.model.width}",
        "batch": batch,
        "examples_per_epoch": examples,
        "seconds_per_epoch": seconds,
        "samples_per_s": examples / seconds,
        "gflops_per_s": flops / seconds / 1e9,
        "matmul_gflops_per_s": reference,
        "ratio": flops / seconds / 1e9 / reference,
    }


def bench_training(what, overrides, depth, width, batch, examples, device, args) -> dict:
    cfg = compose([*overrides, f"model.depth={depth}", f"model.width={width}"])
    configure_torch(cfg.trainer, device)
    torch.manual_seed(0)
    learner = build_learner(cfg, FEATURES, CLASSES, (28, 28), device)
    optimizer = make_optimizer(learner.param_groups(), cfg.optimizer)
    examples -= examples % batch  # whole batches only: one shape, one compiled graph
    x = torch.rand(examples, FEATURES, device=device)
    y = torch.randint(0, CLASSES, (examples,), device=device)
    with autocast(cfg.trainer, device):
        learner.train_epoch(x[: 4 * batch], y[: 4 * batch], optimizer, batch)  # warm-up, compile
        sync(device)
        start = time.perf_counter()
        learner.train_epoch(x, y, optimizer, batch)
        sync(device)
        seconds = time.perf_counter() - start
    dtype = torch.bfloat16 if cfg.trainer.precision == "bf16" else torch.float32
    reference = matmul_gflops(training_shapes(cfg, batch), device, args.matmul_seconds, dtype)
    flops = train_flops_per_example(cfg, FEATURES, CLASSES) * examples
    return row(what, cfg, batch, examples, seconds, flops, reference)


def bench_goodness_eval(depth, width, examples, device, args) -> dict:
    """Predicting by goodness: every example once per candidate label, one batched pass."""
    cfg = compose([f"model.depth={depth}", f"model.width={width}"])
    torch.manual_seed(0)
    learner = build_learner(cfg, FEATURES, CLASSES, (28, 28), device)
    x = torch.rand(examples, FEATURES, device=device)
    learner.label_goodness(x[:100])  # warm-up
    sync(device)
    start = time.perf_counter()
    learner.label_goodness(x)
    sync(device)
    seconds = time.perf_counter() - start
    rows = CLASSES * examples
    shapes = [(rows, f, width) for f in [FEATURES] + [width] * (depth - 1)]
    reference = matmul_gflops(shapes, device, args.matmul_seconds)
    flops = goodness_eval_flops_per_example(cfg, FEATURES, CLASSES) * examples
    return row("ff goodness eval", cfg, examples, examples, seconds, flops, reference)


def process_overhead() -> dict:
    """Wall time of a default `ffbench` run against its training time, store already there,
    and the time the process takes just to import ffbench (torch, mlflow, Hydra)."""
    exe = Path(sys.executable).with_name("ffbench")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "FFBENCH_"))}
    with tempfile.TemporaryDirectory() as launch:
        for _ in range(2):  # the first run creates the MLflow store
            start = time.perf_counter()
            subprocess.run([exe], cwd=launch, env=env, check=True, capture_output=True)
            wall = time.perf_counter() - start
        client = MlflowClient(f"sqlite:///{launch}/outputs/mlflow.db")
        ids = [e.experiment_id for e in client.search_experiments()]
        last = client.search_runs(ids, order_by=["attributes.start_time DESC"])[0]
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import ffbench.cli"], env=env, check=True)
    imports = time.perf_counter() - start
    train = last.data.metrics["train_time_s"]
    return {
        "process_wall_s": wall,
        "train_time_s": train,
        "overhead_s": wall - train,
        "import_s": imports,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=10240, help="examples per timed epoch")
    parser.add_argument("--matmul-seconds", type=float, default=2.0)
    parser.add_argument("--no-options", action="store_true", help="skip compile and bf16 rows")
    parser.add_argument("--out", default="outputs/bench/speed.json")
    args = parser.parse_args()
    device = resolve_device("auto")
    console = Console()
    console.width = max(console.width, 100)  # the table's rows stay whole in a pipe or a log
    console.print(
        f"device {device.type}, torch {torch.__version__}, threads {torch.get_num_threads()}"
    )
    console.print(
        "Useful FLOPs per example and layer (MACs = fan-in x fan-out): ff 8*MACs (forward and "
        "weight gradient of positive and negative); ff+readout adds its label-free forward "
        "2*MACs and the read-out's; bp 6*MACs (4*MACs for the first layer) plus the output "
        "layer; goodness evaluation 2*MACs per candidate label. Details: ffbench/flops.py"
    )
    rows = []
    for depth, width in NETS:
        for batch in BATCHES:
            for what, algo, overrides in ALGOS:
                rows.append(
                    bench_training(
                        what, [f"algo={algo}", *overrides], depth, width, batch, args.examples,
                        device, args,
                    )
                )  # fmt: skip
                console.print(f"  done {what} {depth}x{width} batch {batch}")
        rows.append(bench_goodness_eval(depth, width, max(512, args.examples // 5), device, args))
    options = OPTIONS + ([("tf32", ["trainer.precision=tf32"])] if device.type == "cuda" else [])
    if not args.no_options:
        depth, width = NETS[-1]
        for option, overrides in options:
            for batch in BATCHES:
                for what, algo in (("ff", ["algo=ff", "algo.readout=false"]), ("bp", ["algo=bp"])):
                    rows.append(
                        bench_training(
                            f"{what} {option}", [*algo, *overrides], depth, width, batch,
                            args.examples, device, args,
                        )
                    )  # fmt: skip
                    console.print(f"  done {what} {option} {depth}x{width} batch {batch}")
    table = Table(title="training speed against matmul throughput of the same shapes")
    columns = ("what", "net", "batch", "s/epoch", "samples/s", "GFLOP/s", "matmul GFLOP/s", "ratio")
    for column in columns:
        table.add_column(column, justify="right")
    for r in rows:
        table.add_row(
            r["what"],
            r["net"],
            str(r["batch"]),
            f"{r['seconds_per_epoch']:.2f}",
            f"{r['samples_per_s']:.0f}",
            f"{r['gflops_per_s']:.1f}",
            f"{r['matmul_gflops_per_s']:.1f}",
            f"{r['ratio']:.2f}",
        )
    console.print(table)
    console.print("bf16 rows: the reference is bfloat16 matmul throughput of the same shapes.")
    overhead = process_overhead()
    console.print(
        f"default `ffbench` run: {overhead['process_wall_s']:.1f} s in all, "
        f"{overhead['train_time_s']:.1f} s training, {overhead['overhead_s']:.1f} s overhead "
        f"(of which {overhead['import_s']:.1f} s importing torch, mlflow and Hydra)"
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps({"device": device.type, "rows": rows, "default_run": overhead}, indent=2)
    )
    console.print(f"written {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
