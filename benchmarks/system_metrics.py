"""What tracking.system_metrics costs: MLflow's monitor wakes every
tracking.system_metrics_interval_s, samples the machine (psutil; GPUs with nvidia-ml-py), asks
the store whether the run still runs and writes the sample. This times those steps on a real
SQLite store (CPU time of one wake-up, hence the share of a core at each interval), then
trains the same run with and without the monitor, interleaved, and compares their times.

.venv/bin/python benchmarks/system_metrics.py [--repeats 3] [OVERRIDES...]
"""

import argparse
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import mlflow
from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

FFBENCH = Path(__file__).resolve().parents[1] / ".venv" / "bin" / "ffbench"
INTERVALS_S = (1, 10)


def wake_up_cpu_s(store: str, samples: int = 50) -> float:
    """CPU seconds of one wake-up of the monitor, as its loop does it, on `store`."""
    mlflow.set_tracking_uri(store)
    with mlflow.start_run() as run:
        monitor = SystemMetricsMonitor(run.info.run_id, tracking_uri=store)
        client = mlflow.MlflowClient(store)
        monitor.collect_metrics()  # psutil's first CPU reading, and the store's first query
        start = time.process_time()
        for _ in range(samples):
            monitor.collect_metrics()
            client.get_run(run.info.run_id)
            monitor.publish_metrics(monitor.aggregate_metrics())
        return (time.process_time() - start) / samples


def train(folder: Path, system_metrics: bool, overrides: list[str]) -> dict:
    """train_time_s and wall_time_s of one `ffbench` run in `folder`."""
    store = f"sqlite:///{folder / 'mlflow.db'}"
    command = [str(FFBENCH), f"tracking.uri={store}", f"tracking.system_metrics={system_metrics}"]
    command += ["tracking.system_metrics_interval_s=1", *overrides]
    subprocess.run(command, cwd=folder, check=True, capture_output=True)
    [run] = mlflow.MlflowClient(store).search_runs(
        ["1"], order_by=["attributes.start_time DESC"], max_results=1
    )
    return run.data.metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("overrides", nargs="*", default=["trainer.num_threads=1"])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        cpu = wake_up_cpu_s(f"sqlite:///{folder / 'probe.db'}")
        print(f"one wake-up of the monitor: {cpu * 1000:.1f} ms of CPU")
        for interval in INTERVALS_S:
            print(f"  every {interval:>2} s: {cpu / interval:.2%} of one core")
        times = {False: [], True: []}
        for _ in range(args.repeats):  # interleaved, so that drift hits both alike
            for on in times:
                times[on].append(train(folder, on, args.overrides))
    print(f"ffbench {' '.join(args.overrides)}, sampling every 1 s, median of {args.repeats}:")
    for key in ("train_time_s", "wall_time_s"):
        off, on = (statistics.median(m[key] for m in times[flag]) for flag in (False, True))
        print(f"  {key}: {off:.2f} without, {on:.2f} with the monitor ({on / off - 1:+.1%})")


if __name__ == "__main__":
    main()
