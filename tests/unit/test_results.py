"""docs/results.md and the README from the committed run records: checkable by anyone.

The page and the README's blocks must be what the records give; a row's command must compose
the config its runs recorded; an uncommitted tree's runs never make a figure; a row pools only
runs of one config and one commit; a study reports the setting chosen on its search seeds over
the other seeds; records go into a store and come back unchanged, once.
"""

import copy
import json
import statistics
import sys
from pathlib import Path

import pytest
from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from ffbench import compare, records

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
import results  # noqa: E402

DIGITS = ROOT / "docs" / "records" / "digits"


def test_the_docs_are_what_the_committed_records_give():
    assert results.main(["--root", str(ROOT), "--check"]) == 0


def test_every_row_command_composes_the_config_its_runs_recorded():
    assert results.problems(ROOT) == []


def _root(tmp_path: Path, edit=None) -> Path:
    """A repository root holding the digits records, each passed through `edit` first."""
    folder = tmp_path / "docs" / "records" / "digits"
    folder.mkdir(parents=True)
    for path in DIGITS.glob("*.json"):
        record = json.loads(path.read_text())
        if edit is not None:
            edit(record)
        (folder / path.name).write_text(records.dumps(record))
    return tmp_path


def test_a_preset_that_drifted_since_its_runs_is_named(tmp_path):
    def wider(record):
        record["params"]["model.width"] = "300"  # the runs recorded another width than now

    found = results.problems(_root(tmp_path, wider))
    assert found and all("model.width" in line and "digits" in line for line in found)


def test_runs_of_an_uncommitted_tree_make_no_figure(tmp_path, capsys):
    def dirty(record):
        if record["params"]["algo"] == "bp":
            record["tags"]["ffbench.git_commit"] += "-dirty"

    root = _root(tmp_path, dirty)
    assert results.main(["--root", str(root)]) == 1
    error = capsys.readouterr().err
    assert "uncommitted tree" in error and "bp-" in error and error.count("\n") == 1
    assert not (root / results.PAGE).exists()


def test_a_row_pools_only_runs_of_one_commit(tmp_path):
    def seed_two_elsewhere(record):
        if record["params"]["trainer.seed"] == "2":
            record["tags"]["ffbench.git_commit"] = "0" * 40

    root = _root(tmp_path, seed_two_elsewhere)
    page, _, _ = results.build(root)
    section = page.split("## Untuned")[1]
    ff_rows = [line for line in section.splitlines() if line.startswith("| ff |")]
    assert len(ff_rows) == 2
    assert "| 0, 1 |" in ff_rows[0] + ff_rows[1] and "| 2 |" in ff_rows[0] + ff_rows[1]


def test_welch_interval_matches_scipy():
    from scipy.stats import ttest_ind

    a, b = [0.981, 0.984, 0.979, 0.983], [0.986, 0.985, 0.988]
    d, low, high = results.welch(a, b)
    interval = ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    assert d == pytest.approx(statistics.mean(a) - statistics.mean(b))
    assert (low, high) == pytest.approx((interval.low, interval.high))


def test_a_contrast_is_paired_by_seed_beside_the_seeds_own_spread():
    base = records.read(DIGITS)[0]
    made = []
    for seed, fp32, bf16 in (("0", 0.90, 0.91), ("1", 0.92, 0.92), ("2", 0.94, 0.96)):
        for precision, val in (("fp32", fp32), ("bf16", bf16)):
            record = copy.deepcopy(base)
            record["run_id"] = f"{precision}{seed}".ljust(32, "0")
            record["params"] |= {"trainer.precision": precision, "trainer.seed": seed}
            record["metrics"] |= {"val_accuracy": val, "test_accuracy": val}
            made.append(records.as_run(record))
    source = results.Source("P", "p", (), "About.", contrast=("trainer.precision", "bf16", "fp32"))
    lines = results.contrast(source, made)
    d, low, high = results.paired([0.91, 0.92, 0.96], [0.90, 0.92, 0.94])
    assert d == pytest.approx(0.01)  # differences 0.01, 0.0, 0.02 by seed
    assert f"bf16 - fp32: {d:+.4f}, 95% interval [{low:+.4f}, {high:+.4f}]" in lines[1]
    assert "sd: 0.0200 in fp32, 0.0265 in bf16" in lines[1]
    assert results.contrast(source, made[:2]) == []  # one seed: no interval


def test_time_and_flops_to_reach_99_percent_of_the_final_validation_accuracy():
    record = {
        "metrics": {"val_accuracy": 0.9, "train_gflops_per_s": 2.0, "train_time_s": 40.0},
        "history": {
            "val_accuracy": [[1, 0.5], [2, 0.892], [3, 0.889], [4, 0.9]],
            "epoch_time_s": [[1, 10.0], [2, 11.0], [3, 9.0], [4, 10.0]],
        },
    }
    seconds, tflop = results.to_target(record)
    assert seconds == 21.0  # 0.892 >= 0.99 * 0.9 = 0.891 first at pass 2
    assert tflop == pytest.approx(2.0 * 40.0 * 1e9 * 2 / 4 / 1e12)


def _study(kept_seeds=("1", "2", "3")) -> list[dict]:
    """A comparison's records made from the digits ones: BP tried lr 1e-3 and 3e-3 on seed 0
    (3e-3 better), then 3e-3 on `kept_seeds`; FF its recipe on seeds 1 to 3."""
    base = {r["params"]["algo"]: r for r in records.read(DIGITS)}
    made = []

    def make(algo: str, lr: str, seed: str, val: float, test: float) -> None:
        record = copy.deepcopy(base[algo])
        record["run_id"] = f"{algo}{lr}{seed}".ljust(32, "0")
        record["start_time"] += len(made)
        record["params"] |= {"optimizer.lr": lr, "trainer.seed": seed}
        record["tags"]["ffbench.overrides"] = f"algo={algo} optimizer.lr={lr} trainer.seed={seed}"
        record["metrics"] |= {"val_accuracy": val, "test_accuracy": test}
        made.append(record)

    make("bp", "0.001", "0", 0.90, 0.5)
    make("bp", "0.003", "0", 0.95, 0.5)
    for seed, val, test in zip(kept_seeds, (0.96, 0.94, 0.95), (0.97, 0.96, 0.95), strict=False):
        make("bp", "0.003", seed, val, test)
    for seed, test in zip(("1", "2", "3"), (0.93, 0.92, 0.94), strict=True):
        make("ff", "0.001", seed, 0.9, test)
    return made


def _compare(made: list[dict]) -> tuple[str, str]:
    source = results.Source(
        "A study", "study-x", ("ffbench -m algo=ff,bp",), "About.", True, ("0",)
    )
    page, readme, picture = results.comparison(
        source, [records.as_run(r) for r in made], {r["run_id"]: r for r in made}
    )
    assert picture.startswith("<?xml")
    return page, readme


def test_a_study_reports_the_setting_chosen_on_its_search_seed_over_the_others():
    page, readme = _compare(_study())
    bp = next(line for line in page.splitlines() if line.startswith("| bp |"))
    assert "optimizer.lr=0.003" in bp and "| 1, 2, 3 |" in bp and "0.9600 ± 0.0100" in bp
    assert "trainer.seed=1,2,3" in bp
    difference = results.welch([0.93, 0.92, 0.94], [0.97, 0.96, 0.95])
    assert f"FF - BP test accuracy: {difference[0]:+.4f}" in readme
    assert f"[{difference[1]:+.4f}, {difference[2]:+.4f}]" in readme
    search = page.split("Every setting tried")[1]
    assert "`algo=bp optimizer.lr=0.001`" in search and "| 0.9000 |" in search


def test_a_study_short_of_seeds_says_the_command_that_completes_it():
    page, readme = _compare(_study(kept_seeds=("1",)))
    assert "Not complete yet: bp: `algo=bp optimizer.lr=0.003` chosen on validation" in readme
    assert "ffbench -m algo=bp optimizer.lr=0.003 trainer.seed=1,2,3" in readme
    assert "FF - BP" not in readme  # no interval from one seed
    # the README shows no row of the comparison until both sides have their seeds: FF's
    # three-seed row waits for BP's, and stays on the page
    assert "| ff |" not in readme and "| ff |" in page
    assert "[docs/results.md](docs/results.md)" in readme


def test_the_reporting_seeds_follow_the_search_seeds():
    assert results.report_seeds(("0",)) == ["1", "2", "3"]
    assert results.report_seeds(("1",)) == ["2", "3", "4"]  # best_ff_mnist: FF searched on 1
    assert results.report_seeds(()) == ["1", "2", "3"]


def _store(tmp_path: Path, name: str) -> MlflowClient:
    return MlflowClient(f"sqlite:///{tmp_path / name}")


def test_records_go_into_a_store_and_come_back_unchanged_once(tmp_path):
    source = _store(tmp_path, "a.db")
    experiment = source.create_experiment("study-x")
    run = source.create_run(experiment, 1000, {"mlflow.user": "me"}, "ff-relu-digits")
    run_id = run.info.run_id
    source.log_batch(
        run_id,
        metrics=[Metric("val_accuracy", v, 1000 + s, s) for s, v in ((1, 0.5), (2, 0.75))]
        + [Metric("test_accuracy", 0.7, 2000, 2)],
        params=[Param("algo", "ff"), Param("trainer.seed", "0")],
        tags=[
            RunTag("ffbench.git_commit", "abc"),
            RunTag("ffbench.output_dir", "/mnt/lab/outputs/x"),
            RunTag("ffbench.settings_hash", "0123456789abcdef"),
        ],
    )
    data = Dataset("digits", "d1g3st", "local", json.dumps({"uri": "/mnt/lab/data.gz"}))
    source.log_inputs(run_id, [DatasetInput(data, [InputTag("mlflow.data.context", "test")])])
    source.set_terminated(run_id, "FINISHED", 3000)

    [path] = records.export(source, "study-x", tmp_path / "records")
    text = path.read_text()
    assert "/mnt/lab" not in text and "mlflow.user" not in text
    record = json.loads(text)
    assert record["history"] == {"val_accuracy": [[1, 0.5], [2, 0.75]]}
    assert json.loads(record["inputs"][0]["dataset"]["source"]) == {"uri": "data.gz"}

    target = _store(tmp_path, "b.db")
    assert records.load(target, records.read(tmp_path / "records")) == 1
    assert records.load(target, records.read(tmp_path / "records")) == 0
    [copied] = target.search_runs([target.get_experiment_by_name("study-x").experiment_id])
    assert copied.info.status == "FINISHED" and copied.info.run_name == "ff-relu-digits"
    assert copied.data.params == {"algo": "ff", "trainer.seed": "0"}
    assert copied.data.metrics == {"val_accuracy": 0.75, "test_accuracy": 0.7}
    assert copied.data.tags["ffbench.settings_hash"] == "0123456789abcdef"  # sweeps find it
    steps = [
        (m.step, m.value) for m in target.get_metric_history(copied.info.run_id, "val_accuracy")
    ]
    assert sorted(steps) == [(1, 0.5), (2, 0.75)]
    assert copied.inputs.dataset_inputs[0].dataset.digest == "d1g3st"
    again = records.record_of(target, copied, "study-x")
    assert {k: again[k] for k in ("params", "metrics", "history", "status")} == {
        k: record[k] for k in ("params", "metrics", "history", "status")
    }


def test_the_report_picture_names_each_run(tmp_path):
    runs = [records.as_run(r) for r in records.read(DIGITS)]
    keys, found, _ = compare.split(runs)
    by_id = {r["run_id"]: r for r in records.read(DIGITS)}
    path = compare.draw_epochs(
        lambda run: by_id[run.info.run_id]["history"]["val_accuracy"],
        found,
        keys,
        tmp_path / "a.svg",
    )
    text = path.read_text()
    for algo in ("ff", "bp"):
        for seed in ("0", "1", "2"):
            assert f"algo={algo} seed {seed}" in text
    assert "<dc:date>" not in text  # the same records give the same bytes
