"""Training speed against what this machine's matrix unit can do, in one process (make bench).

1. Finds the matrix unit (CPU flags: AMX, AVX-512 BF16; or the CUDA device) and measures one
   large square matmul in float32 and bfloat16: the machine's peak.
2. Times FF and BP training on MNIST-shaped data for nets 2x500, 3x1000 and 4x2000 at
   batches 100 and 512, FF's goodness evaluation, then the speed options (bf16 autocast,
   torch.compile, both; tf32 on CUDA) on 4x2000 and 3x1000.
3. Counts their useful FLOPs from the architecture (ffbench/flops.py states the formulas) and
   divides the achieved GFLOP/s by the GFLOP/s of plain matmuls of exactly the same shapes,
   in the same precision, measured right after in the same process ("ratio"), and by the
   square matmul's ("of peak"), so that small-shape inefficiency shows rather than cancels.
4. Prints the table and the targets of issue 14 with what this run measured, and writes JSON;
   also the whole-process time of a default `ffbench` run and the import time inside it.

    python benchmarks/speed.py                 # everything (about 10 minutes on 2 CPU cores)
    python benchmarks/speed.py --only "4x2000"  # the rows whose name or net contains this
    python benchmarks/speed.py --no-options    # without the bf16 and compile rows

Timings are noisy on shared machines: each time is the best of --repeats parts of the epoch
and each matmul rate the best of many rounds, and only ratios measured in one run count.
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
from ffbench.flops import (
    goodness_eval_flops_per_example,
    train_flops_per_example,
    train_matmul_shapes,
)
from ffbench.measure import Stopwatch, matmul_gflops

FEATURES, CLASSES = 784, 10
NETS = [(2, 500), (3, 1000), (4, 2000)]  # (depth, width); 3x1000: the best-known faithful port
BATCHES = [100, 512]  # 100: the paper's minibatch, where per-step overhead shows
# (row name, overrides). `ff` is FF's own work: random negatives, forward and weight gradient
# of positives and negatives; `ff+readout` is the default config, whose label-free read-out
# pass counts as useful because the config asks for it.
ALGOS = [
    ("ff", ["algo=ff", "algo.readout=false"]),
    ("ff+readout", ["algo=ff"]),
    ("bp", ["algo=bp"]),
]
OPTIONS = [  # (name, overrides, nets); FF without read-out and BP, at both batch sizes
    ("bf16", ["trainer.precision=bf16"], [(3, 1000), (4, 2000)]),
    ("compile", ["trainer.compile=true"], [(4, 2000)]),
    ("bf16 compile", ["trainer.precision=bf16", "trainer.compile=true"], [(4, 2000)]),
]
SQUARE = 2048  # the peak: one (SQUARE x SQUARE) @ (SQUARE x SQUARE) product
# Issue 14's targets: (row, net, batch, least ratio to matmul of the same shapes)
TARGETS = [
    (what, "4x2000", batch, least)
    for batch, fp32, bf16 in ((512, 0.85, 0.6), (100, 0.8, 0.4))
    for what, least in (("ff", fp32), ("bp", fp32), ("ff bf16", bf16), ("bp bf16", bf16))
] + [("ff", "3x1000", 100, 0.7), ("bp", "3x1000", 100, 0.7)]
DEFAULT_RUN_TARGET_S = 6.0


def matrix_unit(device: torch.device) -> str:
    """What multiplies matrices here, in words: the CUDA device, or the CPU's bf16 support
    read from its flags (AMX tiles: bf16 matmul about 6x float32; AVX-512 BF16 about 2x)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return "unknown (no /proc/cpuinfo)"
    if "amx_bf16" in flags:
        return "AMX (amx_bf16 tiles)"
    if "avx512_bf16" in flags:
        return "AVX-512 BF16 (no AMX)"
    return "no bf16 instructions (bf16 emulated)"


def row(what, net, batch, examples, seconds, flops, reference, peak) -> dict:
    achieved = flops / seconds / 1e9
    return {
        "what": what,
        "net": net,
        "batch": batch,
        "examples_per_epoch": examples,
        "seconds_per_epoch": seconds,
        "samples_per_s": examples / seconds,
        "gflops_per_s": achieved,
        "matmul_gflops_per_s": reference,
        "ratio": achieved / reference,
        "of_peak": achieved / peak,
    }


def best_seconds_per_example(parts, device) -> float:
    """The fastest of `parts` (each a number of examples, and a callable doing them)."""
    stopwatch, best = Stopwatch(device), float("inf")
    for examples, run in parts:
        with stopwatch:
            run()
        best = min(best, stopwatch.last / examples)
    return best


def bench_training(what, overrides, depth, width, batch, device, args, peaks) -> dict:
    cfg = compose([*overrides, f"model.depth={depth}", f"model.width={width}"])
    configure_torch(cfg.trainer, device)
    torch.manual_seed(0)
    learner = build_learner(cfg, FEATURES, CLASSES, (28, 28), device)
    optimizer = make_optimizer(learner.param_groups(), cfg.optimizer)
    part = max(batch, args.examples // args.repeats // batch * batch)  # whole batches only
    x = torch.rand(part, FEATURES, device=device)
    y = torch.randint(0, CLASSES, (part,), device=device)
    warm_up = Stopwatch(device)
    with autocast(cfg.trainer, device):
        with warm_up:  # the first 4 steps: torch.compile compiles here
            learner.train_epoch(x[: 4 * batch], y[: 4 * batch], optimizer, batch)

        def epoch():
            learner.train_epoch(x, y, optimizer, batch)

        per_example = best_seconds_per_example([(part, epoch)] * args.repeats, device)
    bf16 = cfg.trainer.precision == "bf16"
    dtype = torch.bfloat16 if bf16 else torch.float32
    shapes = train_matmul_shapes(cfg, FEATURES, CLASSES, batch)
    reference = matmul_gflops(shapes, device, args.matmul_seconds, dtype)
    flops = train_flops_per_example(cfg, FEATURES, CLASSES)
    examples = args.examples // batch * batch
    net = f"{depth}x{width}"
    peak = peaks["bf16" if bf16 else "fp32"]
    seconds = per_example * examples
    result = row(what, net, batch, examples, seconds, flops * examples, reference, peak)
    return result | {"warm_up_s": warm_up.last - 4 * batch * per_example}  # beyond 4 steps' time


def bench_goodness_eval(what, overrides, depth, width, device, args, peaks) -> dict:
    """Predicting by goodness: every example once per candidate label, one batched pass."""
    cfg = compose([*overrides, f"model.depth={depth}", f"model.width={width}"])
    configure_torch(cfg.trainer, device)
    torch.manual_seed(0)
    learner = build_learner(cfg, FEATURES, CLASSES, (28, 28), device)
    examples = max(500, args.examples // 5)
    x = torch.rand(examples, FEATURES, device=device)
    part = examples // args.repeats
    with autocast(cfg.trainer, device):
        learner.predict_all(x[:100])  # warm-up
        chunks = [(part, lambda i=i: learner.predict_all(x[i * part : (i + 1) * part])) for i in range(args.repeats)]  # fmt: skip
        per_example = best_seconds_per_example(chunks, device)
    bf16 = cfg.trainer.precision == "bf16"
    rows = CLASSES * 1000  # predict_all's chunks of 1000 examples, each once per label
    shapes = [(rows, f, width) for f in [FEATURES] + [width] * (depth - 1)]
    reference = matmul_gflops(shapes, device, args.matmul_seconds, torch.bfloat16 if bf16 else torch.float32)  # fmt: skip
    flops = goodness_eval_flops_per_example(cfg, FEATURES, CLASSES) * examples
    peak = peaks["bf16" if bf16 else "fp32"]
    net = f"{depth}x{width}"
    return row(what, net, examples, examples, per_example * examples, flops, reference, peak)


def process_overhead() -> dict:
    """Wall time of a default `ffbench` run against its training time, store already there,
    and the time the process takes just to import ffbench's command line."""
    exe = Path(sys.executable).with_name("ffbench")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "FFBENCH_"))}
    with tempfile.TemporaryDirectory() as launch:
        walls = []
        for _ in range(3):  # the first run creates the MLflow store: not counted
            start = time.perf_counter()
            subprocess.run([exe], cwd=launch, env=env, check=True, capture_output=True)
            walls.append(time.perf_counter() - start)
        client = MlflowClient(f"sqlite:///{launch}/outputs/mlflow.db")
        ids = [e.experiment_id for e in client.search_experiments()]
        last = client.search_runs(ids, order_by=["attributes.start_time DESC"])[0]
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import ffbench.cli"], env=env, check=True)
    imports = time.perf_counter() - start
    wall, train = min(walls[1:]), last.data.metrics["train_time_s"]
    return {"process_wall_s": wall, "train_time_s": train, "overhead_s": wall - train, "import_s": imports}  # fmt: skip


def compile_break_even(rows: list[dict]) -> list[str]:
    """For each compiled row, the training time after which its compiling has paid for itself:
    the extra first-steps time over the time it saves per second of eager training."""
    lines = []
    eager = {(r["what"], r["net"], r["batch"]): r for r in rows}
    for r in rows:
        plain = eager.get((r["what"].replace(" compile", ""), r["net"], r["batch"]))
        if "compile" not in r["what"] or plain is None:
            continue
        cost = r["warm_up_s"] - plain["warm_up_s"]
        saved = 1 - r["seconds_per_epoch"] / plain["seconds_per_epoch"]  # per eager second
        when = f"after {cost / saved:.0f} s of training" if saved > 0 else "never (no faster)"
        lines.append(
            f"{r['what']} {r['net']} batch {r['batch']}: {cost:.0f} s compiling, "
            f"{saved:+.0%} per step, pays {when}"
        )
    return lines


def targets_table(rows: list[dict], default_run: dict | None) -> Table:
    table = Table(title="issue 14's targets (ratio to matmul of the same shapes)")
    for column in ("row", "net", "batch", "target", "measured", "met"):
        table.add_column(column, justify="right")
    found = {(r["what"], r["net"], r["batch"]): r["ratio"] for r in rows}
    for what, net, batch, least in TARGETS:
        ratio = found.get((what, net, batch))
        if ratio is not None:
            met = "yes" if ratio >= least else "NO"
            table.add_row(what, net, str(batch), f">= {least}", f"{ratio:.2f}", met)
    if default_run is not None:
        wall = default_run["process_wall_s"]
        met = "yes" if wall <= DEFAULT_RUN_TARGET_S else "NO"
        table.add_row("default `ffbench` run", "", "", f"<= {DEFAULT_RUN_TARGET_S} s", f"{wall:.1f} s", met)  # fmt: skip
    return table


DOCS = Path("docs/performance.md")
BLOCK = (
    "<!-- make bench writes this table: do not edit by hand -->",
    "<!-- end of the make bench table -->",
)


def markdown(result: dict) -> str:
    """The run as Markdown: the machine, then one row per measurement (--docs writes it into
    docs/performance.md between the BLOCK lines)."""
    peaks = result["peak_gflops_per_s"]
    lines = [
        f"`make bench` on {result['device']} ({result['matrix_unit']}), torch {result['torch']}, "
        f"{result['threads']} threads; peak {SQUARE}^3 matmul: fp32 {peaks['fp32']:.0f} GFLOP/s, "
        f"bf16 {peaks['bf16']:.0f} GFLOP/s.",
        "",
        "| what | net | batch | samples/s | GFLOP/s | matmul GFLOP/s | ratio | of peak |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['what']} | {r['net']} | {r['batch']} | {r['samples_per_s']:.0f} | "
            f"{r['gflops_per_s']:.1f} | {r['matmul_gflops_per_s']:.1f} | {r['ratio']:.2f} | "
            f"{r['of_peak']:.2f} |"
        )
    run = result["default_run"]
    if run is not None:
        lines += [
            "",
            f"Default `ffbench` run, store present: {run['process_wall_s']:.1f} s in all, "
            f"{run['train_time_s']:.1f} s of it training; `import ffbench.cli` alone "
            f"{run['import_s']:.1f} s.",
        ]
    compiled = compile_break_even(result["rows"])
    if compiled:
        lines += ["", "torch.compile: " + "; ".join(compiled) + "."]
    found = {(r["what"], r["net"], r["batch"]): r["ratio"] for r in result["rows"]}
    lines += ["", "| issue 14's target | ratio | met |", "|---|---:|---|"]
    for what, net, batch, least in TARGETS:
        if (what, net, batch) in found:
            ratio = found[what, net, batch]
            met = "yes" if ratio >= least else "**no**"
            lines.append(f"| {what} {net} batch {batch} >= {least} | {ratio:.2f} | {met} |")
    if run is not None:
        met = "yes" if run["process_wall_s"] <= DEFAULT_RUN_TARGET_S else "**no**"
        lines.append(f"| default run <= {DEFAULT_RUN_TARGET_S:g} s | {run['process_wall_s']:.1f} s | {met} |")  # fmt: skip
    return "\n".join(lines)


def write_docs(text: str) -> None:
    page = DOCS.read_text()
    start, end = page.index(BLOCK[0]) + len(BLOCK[0]), page.index(BLOCK[1])
    DOCS.write_text(page[:start] + "\n" + text + "\n" + page[end:])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=10240, help="examples per timed epoch")
    parser.add_argument("--repeats", type=int, default=3, help="parts of each epoch timed apart")
    parser.add_argument("--matmul-seconds", type=float, default=2.0)
    parser.add_argument("--no-options", action="store_true", help="skip bf16 and compile rows")
    parser.add_argument("--only", default="", help="only rows whose name or net contains this")
    parser.add_argument("--no-default-run", action="store_true", help="skip the `ffbench` run")
    parser.add_argument("--out", default="outputs/bench/speed.json")
    parser.add_argument("--docs", action="store_true", help=f"write the table into {DOCS}")
    args = parser.parse_args()
    device = resolve_device("auto")
    console = Console()
    console.width = max(console.width, 110)  # the table's rows stay whole in a pipe or a log
    square = [(SQUARE, SQUARE, SQUARE)]
    peaks = {
        "fp32": matmul_gflops(square, device, args.matmul_seconds, torch.float32),
        "bf16": matmul_gflops(square, device, args.matmul_seconds, torch.bfloat16),
    }
    unit = matrix_unit(device)
    console.print(
        f"device {device.type}, matrix unit: {unit}; torch {torch.__version__}, threads "
        f"{torch.get_num_threads()}; peak ({SQUARE}^3 matmul): fp32 {peaks['fp32']:.0f} GFLOP/s, "
        f"bf16 {peaks['bf16']:.0f} GFLOP/s ({peaks['bf16'] / peaks['fp32']:.1f}x)"
    )
    console.print(
        "Useful FLOPs per example and layer (MACs = fan-in x fan-out): ff 8*MACs (forward and "
        "weight gradient of positive and negative); ff+readout adds its label-free forward "
        "2*MACs and the read-out's; bp 6*MACs (4*MACs for the first layer) plus the output "
        "layer; goodness evaluation 2*MACs per candidate label. Details: ffbench/flops.py"
    )
    wanted = []  # (what, overrides, depth, width, batch) of the training rows
    for depth, width in NETS:
        for batch in BATCHES:
            wanted += [(what, o, depth, width, batch) for what, o in ALGOS]
    options = OPTIONS + (
        [("tf32", ["trainer.precision=tf32"], [(4, 2000)])] if device.type == "cuda" else []
    )
    for option, overrides, nets in [] if args.no_options else options:
        for depth, width in nets:
            for batch in BATCHES:
                for what, algo in (ALGOS[0], ALGOS[2]):
                    wanted.append((f"{what} {option}", [*algo, *overrides], depth, width, batch))
    rows = []
    for what, overrides, depth, width, batch in wanted:
        if args.only not in f"{what} {depth}x{width}":
            continue
        rows.append(bench_training(what, overrides, depth, width, batch, device, args, peaks))
        console.print(f"  done {what} {depth}x{width} batch {batch}: ratio {rows[-1]['ratio']:.2f}")
    evaluations = [("ff goodness eval", [], (2, 500)), ("ff goodness eval", [], (4, 2000))]
    if not args.no_options:
        evaluations.append(("ff goodness eval bf16", ["trainer.precision=bf16"], (4, 2000)))
    for what, overrides, (depth, width) in evaluations:
        if args.only in f"{what} {depth}x{width}":
            rows.append(bench_goodness_eval(what, overrides, depth, width, device, args, peaks))
    table = Table(title="training speed against matmul throughput")
    columns = ("what", "net", "batch", "s/epoch", "samples/s", "GFLOP/s", "matmul GFLOP/s", "ratio", "of peak")  # fmt: skip
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
            f"{r['of_peak']:.2f}",
        )
    console.print(table)
    console.print(
        "ratio: achieved GFLOP/s over plain matmuls of the same shapes in the same precision; "
        f"of peak: over one {SQUARE}^3 matmul in that precision."
    )
    for line in compile_break_even(rows):
        console.print(line)
    overhead = None if args.no_default_run else process_overhead()
    if overhead is not None:
        console.print(
            f"default `ffbench` run: {overhead['process_wall_s']:.1f} s in all, "
            f"{overhead['train_time_s']:.1f} s training, {overhead['overhead_s']:.1f} s else "
            f"(a bare `import ffbench.cli` takes {overhead['import_s']:.1f} s)"
        )
    console.print(targets_table(rows, overhead))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "device": device.type,
        "matrix_unit": unit,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "peak_gflops_per_s": peaks,
        "rows": rows,
        "default_run": overhead,
    }
    out.write_text(json.dumps(result, indent=2))
    console.print(f"written {out}")
    if args.docs:
        write_docs(markdown(result))
        console.print(f"written the table into {DOCS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
