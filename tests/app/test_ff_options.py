"""Every FF option learns the digits: a whole job (the real config, data and training loop)
in this process, minutes in all. What each option computes is in tests/unit/test_ff_options.py."""

import pytest
from helpers import ONE_THREAD, train_on_digits

from ffbench.activations import ACTIVATIONS
from ffbench.goodness import GOODNESS


@pytest.mark.parametrize(
    "overrides",
    [
        ["algo.negatives=random_label", "algo.evaluation=goodness"],
        ["algo.negatives=random_label", "algo.evaluation=readout"],
        ["algo.negatives=hard_label", "algo.evaluation=goodness"],
        ["algo.negatives=hard_label", "algo.evaluation=readout"],
        ["algo.negatives=hybrid", "algo.evaluation=readout"],
        ["algo.loss=symba"],
        ["goodness.inverted=true"],
        ["goodness=split"],
        ["goodness=sumabs"],
        ["activation=tdist"],
        ["algo.schedule=sequential"],
    ],
    ids=lambda o: " ".join(o),
)
def test_each_option_learns_the_digits(overrides):
    result = train_on_digits([ONE_THREAD, "trainer.epochs=15", "model.width=128", *overrides])
    assert result["test_accuracy"] > 0.75  # chance is 0.1
    keys = {"test_accuracy_readout"} | (
        {"test_accuracy_goodness"} if "hybrid" not in str(overrides) else set()
    )
    assert keys <= result.keys()
    last = result["history"][-1]
    assert "layer1_goodness_pos" in last and "layer1_separation" in last and "readout_loss" in last
    if "algo.schedule=sequential" in overrides:
        assert len(result["history"]) == 2 * 15  # each of the 2 layers trains 15 epochs
        assert "layer0_loss" not in last  # the last passes train the top layer only


# The bounded activations with the default goodness run in `make test` (about 4 s each on one
# core); the rest of the grid (34 more cells, two minutes and a half) in `make test-slow`,
# which CI runs.
IN_MAKE_TEST = {("sumsq", "tanh"), ("sumsq", "sigmoid")}
# goodness=mean (DeeperForward's class-group logit, made for algo.loss=cwc) under the default
# threshold loss does not reach 0.8 with these two activations in 50 epochs (measured 0.65 and
# 0.67 test accuracy): a known gap of its default theta, kept visible (strict: fails if fixed).
SHORT = {("mean", "relu_fullgrad"), ("mean", "tdist")}
GRID = [
    pytest.param(
        g,
        a,
        marks=([] if (g, a) in IN_MAKE_TEST else [pytest.mark.slow])
        + (
            [pytest.mark.xfail(reason="mean goodness's default theta", strict=True)]
            if (g, a) in SHORT
            else []
        ),
    )
    for g in GOODNESS
    for a in ACTIVATIONS
]


@pytest.mark.parametrize(("goodness", "activation"), GRID)
def test_every_goodness_and_activation_learns_the_digits(goodness, activation):
    """As a new user tries them, `ffbench goodness=G activation=A` and nothing else: the
    default theta must suit bounded activations (tanh, sigmoid) too. Measured: 0.88 to 0.98."""
    result = train_on_digits(
        [f"goodness={goodness}", f"activation={activation}", "trainer.num_threads=1"]
    )
    assert result["test_accuracy"] >= 0.8  # chance is 0.1


@pytest.mark.parametrize("width", [64, pytest.param(1024, marks=pytest.mark.slow)])
def test_symba_default_alpha_learns_at_any_width(width):
    """SymBa's alpha acts on goodness per unit, so its default suits 64 units and 1024 (measured 0.90, 0.94)."""
    result = train_on_digits(
        ["algo.loss=symba", f"model.width={width}", "trainer.epochs=15", "trainer.num_threads=1"]
    )
    assert result["test_accuracy"] > 0.75


# As a user tries `ffbench model.norm=N` and nothing else (class_groups needs a width the 10
# classes divide). Measured: unit_length 0.95, standard 0.96, none 0.92, class_groups 0.97.
# unit_length runs in `make test`: its default theta was once the popular scripts' (meansq 2),
# which no ReLU layer reaches at these budgets, and FF learned nothing (0.00 test accuracy).
@pytest.mark.parametrize(
    "overrides",
    [
        ["model.norm=unit_length"],
        pytest.param(["model.norm=standard"], marks=pytest.mark.slow),
        pytest.param(["model.norm=none"], marks=pytest.mark.slow),
        pytest.param(["model.norm=class_groups", "model.width=250"], marks=pytest.mark.slow),
    ],
    ids=lambda o: " ".join(o),
)
def test_each_normalisation_learns_the_digits_with_the_defaults(overrides):
    result = train_on_digits([*overrides, "trainer.num_threads=1"])
    assert result["test_accuracy"] >= 0.8  # chance is 0.1
