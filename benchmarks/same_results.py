"""Fixed-seed results of a set of runs on the bundled digits, to show a refactoring changed none.

Runs the installed `ffbench` once per configuration below (one thread, so the float
reductions run in the same order on any machine), reads each run's final metrics back from
the MLflow store and writes them as JSON. Times and RSS are left out (they are measurements
of the machine, not results); accuracies, losses, goodness statistics and the exact memory
figures (saved activations, parameters, optimizer state) stay in.

    python benchmarks/same_results.py --out before.json            # at the old commit
    python benchmarks/same_results.py --out after.json --against before.json
"""

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from mlflow.tracking import MlflowClient

CONFIGS = {
    "ff": [],
    "bp": ["algo=bp"],
    "bp_ckpt": ["algo=bp_ckpt"],
    "bp_accum": ["algo=bp", "trainer.grad_accum_steps=4"],
    "ff_meansq_gelu": ["goodness=meansq", "activation=gelu"],
    "ff_unit_length": ["goodness=meansq", "model.norm=unit_length"],
    "ff_split": ["goodness=split"],
    "ff_sumabs_inverted": ["goodness=sumabs", "goodness.inverted=true"],
    "ff_tdist": ["activation=tdist"],
    "ff_symba": ["algo.loss=symba"],
    "ff_hard_readout": ["algo.negatives=hard_label", "algo.evaluation=readout"],
    "ff_hybrid": ["algo.negatives=hybrid", "algo.evaluation=readout"],
    "ff_peer": ["algo.peer_norm=0.03"],
    "ff_no_readout": ["algo.readout=false"],
    "ff_sequential": ["algo.schedule=sequential", "trainer.epochs=10"],
    "ff_sgd_decay": ["optimizer=sgd", "optimizer.momentum=0.9", "trainer.lr_schedule=linear_decay"],
    "ff_blackbox": ["model.blackbox=quantize"],
    "bp_blackbox": ["algo=bp", "model.blackbox=sign", "model.blackbox_grad=straight_through"],
    "ff_conv": ["model=conv", "trainer.epochs=10"],
    "ff_conv_planes": ["model=conv", "algo.label_input=planes", "trainer.epochs=10"],
    "ff_conv_position": [
        "model=conv",
        "goodness.spatial=position",
        "model.norm_scope=position",
        "trainer.epochs=10",
    ],
    "ff_local": ["model=local", "trainer.epochs=10"],
    "bp_conv": ["model=conv", "algo=bp", "trainer.epochs=10"],
    "ff_bf16": ["trainer.precision=bf16", "trainer.epochs=10"],
}
# Measurements of the machine, not results of the run.
SKIPPED = ("time", "per_s", "rss", "gflops")


def run_all(ffbench: str, folder: Path) -> dict[str, dict[str, float]]:
    store = f"sqlite:///{folder / 'mlflow.db'}"
    results = {}
    for name, overrides in CONFIGS.items():
        command = [ffbench, *overrides, "trainer.num_threads=1", f"tracking.uri={store}"]
        done = subprocess.run(command, cwd=folder, capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"{name} failed: {' '.join(command)}\n{done.stderr}")
        client = MlflowClient(store)
        run = client.search_runs(
            [e.experiment_id for e in client.search_experiments()],
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )[0]
        metrics = run.data.metrics
        results[name] = {
            k: v for k, v in sorted(metrics.items()) if not any(s in k for s in SKIPPED)
        }
        print(f"{name}: test_accuracy={metrics['test_accuracy']:.4f}", flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="JSON file to write the results to")
    parser.add_argument("--against", help="JSON file of earlier results: exit 1 on any difference")
    here = str(Path(sys.executable).parent)  # the ffbench installed beside this python
    parser.add_argument("--ffbench", default=shutil.which("ffbench", path=here) or "ffbench")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        results = run_all(args.ffbench, Path(folder))
    Path(args.out).write_text(json.dumps(results, indent=1, sort_keys=True))
    if args.against:
        before = json.loads(Path(args.against).read_text())
        differ = [
            f"{name}.{key}: {before[name].get(key)} -> {results.get(name, {}).get(key)}"
            for name in before
            for key in sorted(set(before[name]) | set(results.get(name, {})))
            if before[name].get(key) != results.get(name, {}).get(key)
        ]
        print("\n".join(differ) or f"all {len(before)} runs identical")
        sys.exit(1 if differ else 0)


if __name__ == "__main__":
    main()
