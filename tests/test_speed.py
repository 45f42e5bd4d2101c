"""The useful-FLOP count behind train_gflops_per_s and the speed benchmark."""

import pytest
from conftest import QUICK, all_runs, run_ffbench

from ffbench.experiment import compose_config
from ffbench.flops import goodness_eval_flops_per_example, train_flops_per_example

MACS = 64 * 32 + 32 * 32  # two hidden layers of 32 units on 64 features
HEAD = 32 * 10


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (["algo=ff"], 8 * MACS),  # forward + weight gradient, positive and negative
        (["algo=ff", "algo.negatives=hard_label"], 8 * MACS + 2 * MACS + 4 * 32 * 10),
        (["algo=ff", "algo.schedule=sequential"], (8 * 64 * 32 + 8 * 32 * 32 + 4 * 64 * 32) / 2),
        (["algo=bp"], 2 * MACS + 2 * 32 * 32 + 2 * MACS + 6 * HEAD),
        (["algo=bp_ckpt"], 2 * MACS + 2 * 32 * 32 + 2 * MACS + 6 * HEAD),  # recompute is overhead
    ],
)
def test_training_flops_per_example(overrides, expected):
    cfg = compose_config([*overrides, "model.depth=2", "model.width=32"])
    assert train_flops_per_example(cfg, 64, 10) == expected


def test_goodness_evaluation_flops_cover_every_label():
    cfg = compose_config(["model.depth=2", "model.width=32"])
    assert goodness_eval_flops_per_example(cfg, 64, 10) == 10 * 2 * MACS


def test_each_run_records_its_achieved_gflops(workdir):
    assert run_ffbench(workdir, *QUICK).returncode == 0
    [run] = all_runs(workdir)
    m = run.data.metrics
    cfg = compose_config(QUICK)
    expected = train_flops_per_example(cfg, 64, 10) * 2 * 1257 / m["train_time_s"] / 1e9
    assert m["train_gflops_per_s"] == pytest.approx(expected, rel=1e-3)
