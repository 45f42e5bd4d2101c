"""Training speed against what this machine's matrix unit can do, in one process (make bench).

1. Measures float32 matmul throughput on the very products each net/batch needs.
2. Times FF and BP training epochs and FF's goodness evaluation on MNIST-shaped data.
3. Counts their useful FLOPs from the architecture (ffbench/flops.py states the formulas).
4. Prints a table and writes JSON: seconds per epoch, samples/s, achieved GFLOP/s and the
   ratio to the matmul throughput of the same shapes; also the whole-process overhead of a
   default `ffbench` run (wall time minus training time).
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

from ffbench.experiment import build_algorithm, compose_config, resolve_device
from ffbench.flops import goodness_eval_flops_per_example, train_flops_per_example

FEATURES, CLASSES = 784, 10
NETS = [(2, 500), (4, 2000)]  # (depth, width)
BATCHES = [100, 512]


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_gflops(shapes: list[tuple[int, int, int]], device, seconds: float) -> float:
    """Achieved GFLOP/s of the float32 products (m, k) @ (k, n) in `shapes`, run in turn."""
    pairs = [
        (torch.rand(m, k, device=device), torch.rand(k, n, device=device)) for m, k, n in shapes
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


def training_shapes(algo: str, batch: int, depth: int, width: int) -> list[tuple[int, int, int]]:
    """The products of one training step: forward and weight gradient (FF: 2 x batch rows)."""
    rows = 2 * batch if algo == "ff" else batch
    shapes = []
    for fan_in in [FEATURES] + [width] * (depth - 1):
        shapes += [(rows, fan_in, width), (fan_in, rows, width)]
        if algo == "bp" and fan_in != FEATURES:
            shapes.append((rows, width, fan_in))  # input gradient
    return shapes


def time_epoch(algorithm, x, y, batch, device) -> float:
    algorithm.train_epoch(x[: 4 * batch], y[: 4 * batch], batch)  # warm-up
    sync(device)
    start = time.perf_counter()
    algorithm.train_epoch(x, y, batch)
    sync(device)
    return time.perf_counter() - start


def bench_net(algo, depth, width, batch, examples, device, matmul_seconds) -> dict:
    cfg = compose_config([f"algo={algo}", f"model.depth={depth}", f"model.width={width}"])
    torch.manual_seed(0)
    algorithm = build_algorithm(cfg, FEATURES, CLASSES, (28, 28), device)
    x = torch.rand(examples, FEATURES, device=device)
    y = torch.randint(0, CLASSES, (examples,), device=device)
    seconds = time_epoch(algorithm, x, y, batch, device)
    flops = train_flops_per_example(cfg, FEATURES, CLASSES) * examples
    reference = matmul_gflops(training_shapes(algo, batch, depth, width), device, matmul_seconds)
    row = {
        "what": f"{algo} train",
        "net": f"{depth}x{width}",
        "batch": batch,
        "seconds_per_epoch": seconds,
        "examples_per_epoch": examples,
        "samples_per_s": examples / seconds,
        "gflops_per_s": flops / seconds / 1e9,
        "matmul_gflops_per_s": reference,
    }
    if algo == "ff":
        evaluated = x[: max(batch, examples // 5)]
        algorithm.predict_all(evaluated[:100])  # warm-up
        sync(device)
        start = time.perf_counter()
        algorithm.label_goodness(evaluated)
        sync(device)
        eval_seconds = time.perf_counter() - start
        eval_flops = goodness_eval_flops_per_example(cfg, FEATURES, CLASSES) * len(evaluated)
        rows = CLASSES * len(evaluated)  # every example once per candidate label
        shapes = [(rows, f, width) for f in [FEATURES] + [width] * (depth - 1)]
        return [
            row,
            {
                "what": "ff goodness eval",
                "net": f"{depth}x{width}",
                "batch": len(evaluated),
                "seconds_per_epoch": eval_seconds,
                "examples_per_epoch": len(evaluated),
                "samples_per_s": len(evaluated) / eval_seconds,
                "gflops_per_s": eval_flops / eval_seconds / 1e9,
                "matmul_gflops_per_s": matmul_gflops(shapes, device, matmul_seconds),
            },
        ]
    return [row]


def process_overhead() -> dict:
    """Wall time of a default `ffbench` run against its training time, store already there."""
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
    train = last.data.metrics["train_time_s"]
    return {"process_wall_s": wall, "train_time_s": train, "overhead_s": wall - train}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=10240, help="examples per timed epoch")
    parser.add_argument("--matmul-seconds", type=float, default=2.0)
    parser.add_argument("--out", default="outputs/bench/speed.json")
    args = parser.parse_args()
    device = resolve_device("auto")
    console = Console()
    console.print(
        f"device {device.type}, torch {torch.__version__}, threads {torch.get_num_threads()}"
    )
    console.print(
        "FLOPs per example and layer (MACs = fan-in x fan-out): FF 8*MACs (forward and weight "
        "gradient of positive and negative); BP 6*MACs (4*MACs for the first layer) plus the "
        "output layer; goodness evaluation 2*MACs per candidate label. Details: ffbench/flops.py"
    )
    rows = []
    for depth, width in NETS:
        for batch in BATCHES:
            for algo in ("ff", "bp"):
                rows += bench_net(
                    algo, depth, width, batch, args.examples, device, args.matmul_seconds
                )
                console.print(f"  done {algo} {depth}x{width} batch {batch}")
    table = Table(title="training speed against matmul throughput of the same shapes")
    for column in (
        "what",
        "net",
        "batch",
        "s/epoch",
        "samples/s",
        "GFLOP/s",
        "matmul GFLOP/s",
        "ratio",
    ):
        table.add_column(column, justify="right")
    for row in rows:
        row["ratio"] = row["gflops_per_s"] / row["matmul_gflops_per_s"]
        table.add_row(
            row["what"],
            row["net"],
            str(row["batch"]),
            f"{row['seconds_per_epoch']:.2f}",
            f"{row['samples_per_s']:.0f}",
            f"{row['gflops_per_s']:.1f}",
            f"{row['matmul_gflops_per_s']:.1f}",
            f"{row['ratio']:.2f}",
        )
    console.print(table)
    overhead = process_overhead()
    console.print(
        f"default `ffbench` run: {overhead['process_wall_s']:.1f} s in all, "
        f"{overhead['train_time_s']:.1f} s training, {overhead['overhead_s']:.1f} s overhead"
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
