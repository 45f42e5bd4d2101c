"""The comparison report: printed and logged at the end of a real sweep (FF and BP, two seeds,
on the bundled digits), and `ffbench-report` reading that store back, numbers checked against
the runs' own metrics. A sweep whose report fails is in tests/unit/test_report.py."""

import re
import shutil
import statistics
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import pytest
from helpers import QUICK, all_runs, clean_env, ffbench_here, run_ffbench, store
from mlflow.entities import Param

REPORT = shutil.which("ffbench-report", path=str(Path(sys.executable).parent)) or "ffbench-report"
PICTURES = ("accuracy_per_epoch.png", "accuracy_vs_time.png")
# metric: (format in the table, the better value)
COLUMNS = {
    "test_accuracy": (".4f", max),
    "peak_saved_activations_mb": (".3f", min),
    "peak_rss_mb": (".1f", min),
    "train_time_s": (".2f", min),
    "wall_time_s": (".2f", min),
}
GREEN = re.escape("\x1b[1;32m")  # rich's bold green: the best value of a column
# make test (pytest-xdist, --dist loadgroup): this file's tests on one worker, which builds the
# module's sweep once
pytestmark = pytest.mark.xdist_group("report")


def report(cwd: Path, *args: str, **env: str):
    return run_ffbench(cwd, *args, env=clean_env(**env), timeout=120, exe=REPORT)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("launch")
    result = ffbench_here(cwd, "-m", "algo=ff,bp", "trainer.seed=0,1", *QUICK)  # in this process
    assert result.returncode == 0, result.stderr
    runs = all_runs(cwd)
    [parent] = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if r is not parent]
    assert len(children) == 4 and {r.info.status for r in children} == {"FINISHED"}
    # A third FF seed that failed, recorded as job_run records a failure, added afterwards so
    # that the sweep's own exit stays clean; the report must list it and average without it.
    client, ff = store(cwd), next(r for r in children if r.data.params["algo"] == "ff")
    failed = client.create_run(
        parent.info.experiment_id,
        tags=ff.data.tags
        | {"ffbench.overrides": "algo=ff trainer.seed=2", "ffbench.error": "loss diverged"},
    )
    params = ff.data.params | {"trainer.seed": "2"}
    client.log_batch(failed.info.run_id, params=[Param(k, v) for k, v in params.items()])
    client.set_terminated(failed.info.run_id, "FAILED")
    folder = Path(parent.data.tags["ffbench.sweep_dir"])
    return SimpleNamespace(cwd=cwd, stdout=result.stdout, parent=parent, runs=children, dir=folder)


def rows(stdout: str) -> dict[str, str]:
    """{algo: its row of the comparison table}, colour codes left in. The comparison comes
    first; a later table (each FF layer's own accuracy) names the settings again."""
    found = {}
    for line in stdout.splitlines():
        if " ± " in line and (match := re.search(r"algo=(\w+)", line)):
            found.setdefault(match[1], line)
    return found


def test_a_sweep_ends_with_the_table_logged_with_its_pictures(sweep):
    assert set(rows(sweep.stdout)) == {"ff", "bp"}
    for name in (*PICTURES, "comparison.txt"):
        assert (sweep.dir / name).stat().st_size > 0
    assert (sweep.dir / PICTURES[0]).read_bytes().startswith(b"\x89PNG")
    logged = {a.path for a in store(sweep.cwd).list_artifacts(sweep.parent.info.run_id)}
    assert {*PICTURES, "comparison.txt"} <= logged
    assert "FF against BP" in (sweep.dir / "comparison.txt").read_text()


def test_report_prints_mean_and_sd_over_seeds_and_highlights_the_best(sweep, tmp_path):
    out = tmp_path / "pictures"
    # Colour on, so that the highlight shows; wide, so that no cell wraps.
    result = report(
        sweep.cwd,
        "--sweep",
        sweep.parent.info.run_id,
        "--out",
        str(out),
        FORCE_COLOR="1",
        COLUMNS="200",
    )
    assert result.returncode == 0, result.stderr
    table = rows(result.stdout)
    plain = {algo: re.sub(r"\x1b\[[0-9;]*m", "", line) for algo, line in table.items()}
    for metric, (fmt, better) in COLUMNS.items():
        means = {}
        for algo in ("ff", "bp"):
            values = [r.data.metrics[metric] for r in sweep.runs if r.data.params["algo"] == algo]
            means[algo] = statistics.mean(values)
            cell = f"{means[algo]:{fmt}} ± {statistics.stdev(values):{fmt}}"
            assert f" {cell} " in plain[algo], (metric, plain[algo])
        winner = better(means, key=means.get)
        loser = ({"ff", "bp"} - {winner}).pop()
        assert re.search(rf"{GREEN}\s*{means[winner]:{fmt}}", table[winner]), metric
        assert not re.search(rf"{GREEN}\s*{means[loser]:{fmt}}", table[loser]), metric
    assert re.search(r"algo=ff\s*│\s*2\s*│", plain["ff"])  # the failed third seed: not averaged
    failure = next(line for line in result.stdout.splitlines() if "FAILED" in line)
    assert "algo=ff" in failure and "loss diverged" in failure
    for name in PICTURES:
        assert (out / name).read_bytes().startswith(b"\x89PNG")


def test_report_of_the_experiment_and_of_a_sweep_folder(sweep, tmp_path):
    result = report(sweep.cwd)  # experiment "ffbench" of ./outputs/mlflow.db
    assert result.returncode == 0, result.stderr
    assert rows(result.stdout) == rows(sweep.stdout)  # the parent run is no row
    for name in PICTURES:
        assert (sweep.cwd / "outputs" / "report" / name).stat().st_size > 0
    (sweep.dir / PICTURES[1]).unlink()
    uri = f"sqlite:///{sweep.cwd / 'outputs' / 'mlflow.db'}"
    result = report(tmp_path, "--tracking-uri", uri, "--sweep", str(sweep.dir))
    assert result.returncode == 0, result.stderr
    assert (sweep.dir / PICTURES[1]).stat().st_size > 0  # the sweep folder by default


def test_unknown_experiment_or_sweep_or_no_runs_is_one_line_and_exit_1(sweep, workdir):
    store(sweep.cwd).create_experiment("empty")
    cases = {
        ("--experiment", "nope"): "no experiment 'nope'",
        ("--sweep", "0123456789abcdef"): "no sweep '0123456789abcdef'",
        ("--sweep", str(workdir)): f"no sweep recorded for folder {workdir}",
        ("--experiment", "empty"): "no runs in experiment 'empty'",
        ("--tracking-uri", f"sqlite:///{workdir}/none.db"): "no MLflow store at",
    }
    # All at once: each is mostly the interpreter starting.
    with ThreadPoolExecutor() as pool:
        results = list(pool.map(lambda args: report(sweep.cwd, *args), cases))
    for message, result in zip(cases.values(), results, strict=True):
        assert result.returncode == 1
        [line] = result.stderr.strip().splitlines()
        assert line.startswith(f"ffbench-report: error: {message}")
    assert not list(workdir.iterdir())  # no store created where there was none
