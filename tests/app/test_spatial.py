"""Spatial models (model=conv, model=local), per-position goodness and the black box learn
the digits with FF and BP (whole jobs in this process), and the command refuses bad sizes or
an impossible BP with one line. The pieces are in tests/unit/test_spatial.py."""

import pytest
from helpers import ONE_THREAD, all_runs, ffbench_here, train_on_digits


@pytest.mark.parametrize("model", ["conv", "local"])
@pytest.mark.parametrize("algo", ["ff", "bp"])
def test_spatial_models_learn_the_digits(model, algo):
    epochs = 10 if algo == "ff" else 3
    final = train_on_digits(
        [ONE_THREAD, f"model={model}", f"algo={algo}", f"trainer.epochs={epochs}"]
    )
    # measured: FF conv 0.74 local 0.84 (goodness), BP conv 0.97 local 0.975; chance is 0.1
    assert final["test_accuracy"] > (0.5 if algo == "ff" else 0.85)
    assert final["train_gflops_per_s"] > 0


def test_per_position_goodness_learns_the_digits():
    final = train_on_digits(
        [
            ONE_THREAD,
            "model=conv",
            "goodness.spatial=position",
            "model.norm_scope=position",
            "trainer.epochs=10",
        ]
    )
    assert final["test_accuracy"] > 0.5  # measured 0.77


@pytest.mark.parametrize("kind", ["sign", "quantize", "numpy"])
def test_ff_learns_through_a_black_box(kind):
    final = train_on_digits(
        [ONE_THREAD, f"model.blackbox={kind}", "model.width=128", "trainer.epochs=20"]
    )
    # measured: sign 0.71, quantize 0.87, numpy 0.86; without a black box 0.87; chance 0.1
    assert final["test_accuracy"] > 0.6


def test_bp_learns_through_a_black_box_only_with_a_straight_through_estimator():
    final = train_on_digits(
        [
            ONE_THREAD,
            "algo=bp",
            "model.blackbox=quantize",
            "model.blackbox_grad=straight_through",
            "trainer.epochs=3",
        ]
    )
    assert final["test_accuracy"] > 0.8  # measured 0.97 (0.98 without the black box)


def test_command_line_bad_settings_fail_with_one_line_and_straight_through_is_logged(workdir):
    result = ffbench_here(workdir, "model=local", "model.kernel=9", "model.padding=0")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "ffbench: error: model.kernel=9 is larger than the 8x8 input of hidden layer 1 "
        "(model.padding=0): set model.kernel=8 or less, a larger model.padding, "
        "a smaller model.stride, model.pool or model.depth"
    ]
    result = ffbench_here(workdir, "algo=bp", "model.blackbox=sign")
    assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1
    assert "algo=bp cannot train through model.blackbox=sign" in result.stderr
    assert all_runs(workdir) == []  # nothing recorded, nothing trained
    result = ffbench_here(
        workdir,
        "algo=bp",
        "model=conv",
        "model.blackbox=sign",
        "model.blackbox_grad=straight_through",
        "trainer.epochs=1",
        ONE_THREAD,
    )
    assert result.returncode == 0, result.stderr
    [run] = all_runs(workdir)
    assert run.data.params["model.blackbox_grad"] == "straight_through"
    assert run.data.params["model"] == "conv" and run.data.metrics["train_gflops_per_s"] > 0
