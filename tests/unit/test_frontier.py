"""docs/memory.md's frontier section from the frontier study's committed records
(benchmarks/frontier.py): the page and its pictures are what the records give, each run is the
variant its params say, and the verdicts pick the least total peak that reaches a target."""

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
import frontier  # noqa: E402

from ffbench import records  # noqa: E402


def test_the_memory_page_is_what_the_frontier_records_give():
    assert frontier.main(["--root", str(ROOT), "--check"]) == 0


def test_each_run_is_the_variant_its_params_say():
    def params(algo, floor="False", accum="1"):
        return {"algo": algo, "algo.step_each_layer": floor, "trainer.grad_accum_steps": accum}

    assert frontier.variant(params("ff")) == "FF"
    assert frontier.variant(params("ff", floor="True")) == "FF floor"
    assert frontier.variant(params("ff", floor="True", accum="4")) == "FF floor accum"
    assert frontier.variant(params("bp")) == "BP"
    assert frontier.variant(params("bp", accum="4")) == "BP accum"
    assert frontier.variant(params("bp_ckpt")) == "BP ckpt"
    assert frontier.variant(params("bp_ckpt", accum="4")) == "BP ckpt+accum"


def run(variant, total, val, size=4, batch=256, family="MLP"):
    return frontier.Run(family, size, f"{size} x 2000", batch, variant, total, {}, val, 1.0)


def test_memory_at_equal_accuracy_is_the_least_total_that_reaches_the_target():
    runs = [
        run("FF floor", 100.0, 0.85),  # least FF, but short of 0.9
        run("FF", 300.0, 0.93, size=2),
        run("BP", 250.0, 0.95),
        run("BP accum", 200.0, 0.91, batch=1024),
        run("BP ckpt", 150.0, 0.5),
    ]
    assert frontier.least_at(runs, 0.9).variant == "BP accum"
    assert frontier.least_at(runs, 0.8).variant == "FF floor"
    assert frontier.least_at(runs, 0.99) is None
    _, verdicts = frontier.equal_accuracy(runs)
    at_90 = next(v for v in verdicts if "MLP, 0.9:" in v)
    assert "above" in at_90 and "300 MiB" in at_90 and "200 MiB" in at_90 and "1.50x" in at_90
    at_95 = next(v for v in verdicts if "MLP, 0.95:" in v)  # FF's best is 0.93
    assert at_95 == "- MLP, 0.95: only BP reaches it (BP, 4 x 2000, batch 256: 250 MiB)."
    assert next(v for v in verdicts if "MLP, 0.99:" in v) == "- MLP, 0.99: neither reaches it."


def test_the_regime_compares_the_leanest_ff_with_the_leanest_bp_of_each_cell():
    grid = frontier.cells(
        [
            run("FF floor", 90.0, 0.9),
            run("FF floor accum", 95.0, 0.9),  # more than the floor: not the leanest FF here
            run("BP", 200.0, 0.9),
            run("BP ckpt+accum", 100.0, 0.9),
            run("FF floor", 300.0, 0.9, batch=1024),
            run("FF floor accum", 250.0, 0.9, batch=1024),
            run("BP accum", 200.0, 0.9, batch=1024),
        ]
    )
    lines = frontier.regime(grid)
    assert lines == [
        "- MLP: the leanest FF is below the leanest BP in 1 of 2 cells; from 0.90x (4 x 2000, "
        "batch 256) to 1.25x (4 x 2000, batch 1024)."
    ]
    table = frontier.budget_table(grid)
    assert table[2].endswith("| 0.90 (FF floor / BP ckpt+accum) |")
    assert table[3].endswith("| 1.25 (FF floor accum / BP accum) |")


def test_runs_of_an_uncommitted_tree_make_no_frontier(tmp_path, capsys):
    folder = tmp_path / "docs" / "records" / frontier.EXPERIMENT
    folder.mkdir(parents=True)
    digits = sorted((ROOT / "docs" / "records" / "digits").glob("*.json"))[0]
    record = json.loads(digits.read_text())
    record["tags"]["ffbench.git_commit"] += "-dirty"
    (folder / digits.name).write_text(records.dumps(record))
    page = tmp_path / frontier.PAGE
    page.write_text(f"{frontier.MARKERS[0]}\n{frontier.MARKERS[1]}\n")
    assert frontier.main(["--root", str(tmp_path)]) == 1
    assert "uncommitted tree" in capsys.readouterr().err
    assert page.read_text() == f"{frontier.MARKERS[0]}\n{frontier.MARKERS[1]}\n"


def test_the_studys_parts_train_the_variants_they_name_on_the_whole_grid():
    from ffbench.config import compose, validate

    named = {
        "frontier_mlp": "FF",
        "frontier_mlp_floor": "FF floor",
        "frontier_conv": "FF",
        "frontier_conv_floor": "FF floor",
    }
    for study in frontier.STUDIES:
        for overrides in ([], ["algo=bp_ckpt", "trainer.grad_accum_steps=4"]):
            if overrides and study in named:
                continue
            cfg = compose([f"+study={study}", *overrides])
            params = {
                "algo": cfg.algo.name,
                "algo.step_each_layer": str(cfg.algo.step_each_layer),
                "trainer.grad_accum_steps": str(cfg.trainer.grad_accum_steps),
            }
            # the BP parts compose as FF until their sweep sets algo
            expected = named.get(study, "BP ckpt+accum" if overrides else "FF")
            assert frontier.variant(params) == expected, study
            assert cfg.measure.total and cfg.tracking.experiment == frontier.EXPERIMENT
    for study in ("frontier_mlp_floor", "frontier_conv_floor"):  # their micro-batched half
        cfg = compose([f"+study={study}", "trainer.grad_accum_steps=4"])
        validate(cfg)  # the floor over micro-batches: in the sequential schedule
        params = {"algo": "ff", "algo.step_each_layer": "True", "trainer.grad_accum_steps": "4"}
        assert frontier.variant(params) == "FF floor accum"
    # MLP: 4 depths x 3 batches x (FF, floor, floor accum, 4 BPs); conv: 3 widths x 3 batches x 7
    assert [frontier.results.planned(c) for c in frontier.COMMANDS] == [48, 36, 9, 18, 12, 24]
