"""A study narrowed from the command line and run for real on the digits (both algorithms, two
learning rates, two seeds), then `ffbench-report --select val_accuracy --markdown`, checked
against the MLflow store: the selected learning rate is the best by mean validation accuracy,
the Markdown's figures are the store's means, its command reruns the very settings; and
benchmarks/results.py builds docs/results.md from the study's records (ffbench-records)."""

import itertools
import shlex
import shutil
import statistics
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from helpers import QUICK, REPO, all_runs, clean_env, ffbench_here, run_ffbench, store

REPORT = shutil.which("ffbench-report", path=str(Path(sys.executable).parent)) or "ffbench-report"
LRS = ("0.001", "0.003")  # as the runs' params spell 1e-3 and 3e-3
# metric: its format in the Markdown table, as in the printed one
FIGURES = {
    "val_accuracy": ".4f",
    "test_accuracy": ".4f",
    "peak_saved_activations_mb": ".3f",
    "peak_rss_mb": ".1f",
    "train_time_s": ".2f",
    "eval_time_s": ".2f",
}
# make test (pytest-xdist, --dist loadgroup): this file's tests on one worker, which builds the
# module's study and its selection once
pytestmark = pytest.mark.xdist_group("studies")


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("study")
    narrowed = ["dataset=digits", "optimizer.lr=1e-3,3e-3", "trainer.seed=0,1", *QUICK]
    result = ffbench_here(cwd, "-m", "+study=mnist_mlp", *narrowed)  # in this process
    assert result.returncode == 0, result.stderr
    runs = all_runs(cwd)
    [parent] = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    jobs = [r for r in runs if r is not parent]
    return SimpleNamespace(cwd=cwd, parent=parent, runs=jobs)


def settings(runs) -> dict[tuple[str, str], list]:
    """{(algo, lr): its runs}, computed here from the params alone."""
    found: dict[tuple[str, str], list] = {}
    for run in runs:
        found.setdefault((run.data.params["algo"], run.data.params["optimizer.lr"]), []).append(run)
    return found


def cells(runs, metric: str) -> str:
    values = [run.data.metrics[metric] for run in runs]
    fmt = FIGURES[metric]
    return f"{statistics.mean(values):{fmt}} ± {statistics.stdev(values):{fmt}}"


def markdown_rows(text: str) -> dict[str, list[str]]:
    """{algo: the cells of its row} of the first Markdown table in `text` (a later one, each FF
    layer's own accuracy, names the settings again)."""
    lines = itertools.dropwhile(lambda line: not line.startswith("|"), text.splitlines())
    first = itertools.takewhile(lambda line: line.startswith("|"), lines)
    rows = [line.strip("|").split(" | ") for line in first if not line.startswith("|--")]
    return {row[0].strip(): [cell.strip() for cell in row] for row in rows[1:]}


def test_a_narrowed_study_sweeps_both_algorithms_over_the_grid_given(study):
    """The command line's grid, seeds and epochs replace the study's; the rest is the study's."""
    assert len(study.runs) == 8 and {r.info.status for r in study.runs} == {"FINISHED"}
    combos = {(r.data.params["algo"], r.data.params["optimizer.lr"]) for r in study.runs}
    assert combos == {(algo, lr) for algo in ("ff", "bp") for lr in LRS}
    assert {r.data.params["trainer.seed"] for r in study.runs} == {"0", "1"}
    for run in study.runs:
        params = run.data.params
        assert (params["dataset.name"], params["trainer.epochs"]) == ("digits", "2")
        assert (params["trainer.batch_size"], params["trainer.lr_schedule"]) == (
            "100",
            "linear_decay",
        )
    experiments = {r.info.experiment_id for r in [study.parent, *study.runs]}
    assert len(experiments) == 1  # the study's own experiment, parent run included


@pytest.fixture(scope="module")
def selected(study, tmp_path_factory):
    """`ffbench-report --select val_accuracy --markdown` on the study's sweep."""
    out = tmp_path_factory.mktemp("report") / "results.md"
    sweep = study.parent.data.tags["ffbench.sweep_dir"]
    args = ["--sweep", sweep, "--select", "val_accuracy", "--markdown", str(out)]
    result = run_ffbench(study.cwd, *args, env=clean_env(COLUMNS="250"), timeout=120, exe=REPORT)
    assert result.returncode == 0, result.stderr
    return SimpleNamespace(stdout=result.stdout, rows=markdown_rows(out.read_text()))


def picked(row: list[str]) -> str:
    [lr] = [lr for lr in LRS if f"optimizer.lr={lr}" in row[1]]
    return lr


def test_select_keeps_the_best_validation_setting_and_markdown_matches_the_store(
    study, selected, tmp_path
):
    assert "Selected: each algorithm's setting with the best mean val_accuracy" in selected.stdout
    assert set(selected.rows) == {"ff", "bp"}
    found = settings(study.runs)
    for algo, row in selected.rows.items():
        means = {
            lr: statistics.mean(r.data.metrics["val_accuracy"] for r in found[algo, lr])
            for lr in LRS
        }
        lr = picked(row)
        assert means[lr] == max(means.values()), (algo, means)  # of two equal means, either
        command = shlex.split(row[1].strip("`"))
        assert command[:3] == ["ffbench", "-m", "+study=mnist_mlp"]
        given = {f"algo={algo}", f"optimizer.lr={lr}", "trainer.seed=0,1", "dataset=digits"}
        assert set(command[3:]) == given | set(QUICK)
        assert row[2] == "0, 1"
        runs = found[algo, lr]
        end = 3 + len(FIGURES)
        assert row[3:end] == [cells(runs, metric) for metric in FIGURES], (algo, row)
        [commit] = {r.data.tags["ffbench.git_commit"] for r in runs}
        assert row[end].startswith(f"`{commit[:12]}")
    # reading never changes a run: the sweep's own record keeps the comparison it logged
    saved = store(study.cwd).download_artifacts(
        study.parent.info.run_id, "comparison.txt", str(tmp_path)
    )
    assert "FF against BP" in Path(saved).read_text()
    assert "Selected" not in Path(saved).read_text()


RECORDS = (
    shutil.which("ffbench-records", path=str(Path(sys.executable).parent)) or "ffbench-records"
)


def test_results_page_from_the_study_records(study, selected, tmp_path):
    """`ffbench-records export` writes the study's runs as records; benchmarks/results.py makes
    docs/results.md from the records alone, selecting as ffbench-report did."""
    folder = tmp_path / "docs" / "records" / "study-mnist_mlp"
    uri = f"sqlite:///{study.cwd / 'outputs' / 'mlflow.db'}"
    args = ["export", str(folder), "--tracking-uri", uri, "--experiment", "study-mnist_mlp"]
    exported = run_ffbench(study.cwd, *args, env=clean_env(), timeout=120, exe=RECORDS)
    assert exported.returncode == 0, exported.stderr
    assert len(list(folder.glob("*.json"))) == len(study.runs)
    for path in folder.glob("*.json"):  # a working tree under edit: provenance is a unit test's
        path.write_text(path.read_text().replace('-dirty"', '"'))
    script = [sys.executable, str(REPO / "benchmarks" / "results.py"), "--root", str(tmp_path)]
    done = subprocess.run(script, capture_output=True, text=True, env=clean_env(), timeout=120)
    assert done.returncode == 0, done.stderr
    text = (tmp_path / "docs" / "results.md").read_text()
    assert "Not run yet: `ffbench -m +study=paper_mnist_bp_sgd" in text  # no records of it here
    rows = markdown_rows(text.split("## Study: MNIST")[1].split("\n## ")[0].split("Every")[0])
    assert set(rows) == set(selected.rows) == {"ff", "bp"}
    for algo, row in rows.items():
        report = selected.rows[algo]
        # command, seeds, validation and test accuracy: the same as ffbench-report's selection
        assert (row[1], row[4], row[5], row[6]) == (report[1], report[2], report[3], report[4])


def test_the_markdown_command_reruns_the_same_settings(study, selected):
    """Run again as written, the selected row's command finds each of its runs already
    FINISHED with the same settings (their hash: ffbench/settings.py) and trains nothing."""
    command = shlex.split(selected.rows["bp"][1].strip("`"))
    rerun = ffbench_here(study.cwd, *command[1:])
    assert rerun.returncode == 0, rerun.stderr
    before = {r.info.run_id for r in study.runs}
    new = [
        r for r in all_runs(study.cwd) if r.info.run_id not in before and "algo" in r.data.params
    ]
    assert len(new) == 2 and all(r.data.tags.get("ffbench.skipped") == "true" for r in new)
    chosen = {r.info.run_id for r in settings(study.runs)["bp", picked(selected.rows["bp"])]}
    assert {r.data.tags["ffbench.result_run_id"] for r in new} == chosen
