"""Every FF option learns the digits: a whole job (the real config, data and training loop)
in this process, minutes in all. What each option computes is in tests/unit/test_ff_options.py."""

import pytest
from helpers import train_on_digits


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
    result = train_on_digits(["trainer.epochs=15", "model.width=128", *overrides])
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


def test_conv_net_learns_the_digits_with_label_planes():
    result = train_on_digits(["trainer.epochs=15", "model=conv", "algo.label_input=planes"])
    assert result["test_accuracy_goodness"] > 0.5  # chance is 0.1; measured 0.72 on validation
