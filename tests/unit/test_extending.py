"""docs/extending.md's examples, done in a test: an activation, an FF loss and a data set,
each an entry in its registry and nothing else, become options that compose, validate and
train, for FF and BP alike, with the checks and counts that follow from what the entry says."""

import functools

import pytest
import torch
from helpers import SMALL_FF, digits_job, make_learner, train_on_digits

from ffbench import activations, data, experiment, goodness
from ffbench.config import compose, validate
from ffbench.errors import FFBenchError
from ffbench.flops import goodness_eval_flops_per_example, train_flops_per_example


def test_a_new_activation_is_an_entry(monkeypatch):
    softsign = activations.Activation(torch.nn.functional.softsign, bounded=True)  # |a| < 1
    monkeypatch.setitem(activations.ACTIVATIONS, "softsign", softsign)
    ff = make_learner([*SMALL_FF, "activation=softsign"])
    assert ff.stack.activation is torch.nn.functional.softsign
    # bounded: FF's threshold is what its 16 units give at initialisation, not 16
    assert ff.thetas == [16 * goodness.initial_level("softsign", 2)] * 3
    assert ff.thetas[0] < 16 * 0.2
    bp = train_on_digits([*SMALL_FF, "algo=bp", "activation=softsign", "trainer.epochs=2"])
    assert bp["test_accuracy"] > 0.5  # it learns (chance: 0.1)


def _logistic_loss(s_pos, s_neg, labels=None, *, theta):
    """The threshold loss written out: log(1 + exp(-(s - theta))) for positives, and the
    same with the sign turned for negatives."""
    pos = torch.log1p(torch.exp(-(s_pos - theta)))
    neg = torch.log1p(torch.exp(s_neg - theta))
    return torch.cat([pos, neg]).mean()


def test_a_new_ff_loss_is_an_entry(monkeypatch):
    loss = goodness.Loss(lambda cfg, theta, scale: functools.partial(_logistic_loss, theta=theta))
    monkeypatch.setitem(goodness.LOSSES, "logistic", loss)
    overrides = [*SMALL_FF, "trainer.epochs=1", "trainer.batch_size=128"]
    ours = train_on_digits([*overrides, "algo.loss=logistic"])
    threshold = train_on_digits(overrides)  # the same loss, as softplus
    assert abs(ours["history"][0]["train_loss"] - threshold["history"][0]["train_loss"]) < 1e-4
    cfg = compose([*overrides, "algo.loss=logistic"])
    assert train_flops_per_example(cfg, 64, 10) == train_flops_per_example(
        compose(overrides), 64, 10
    )


def test_a_loss_without_negatives_is_checked_and_counted_by_what_its_entry_says(monkeypatch):
    competing = goodness.Loss(
        goodness.LOSSES["cwc"].make, negatives=False, label_input=False, competitive=True
    )
    monkeypatch.setitem(goodness.LOSSES, "competing", competing)
    with pytest.raises(FFBenchError) as err:
        validate(compose(["algo.loss=competing", "algo.negatives=none"]))
    assert str(err.value) == (
        "algo.loss=competing reads the class from each layer's channel groups, not from "
        "the input: set algo.label_input=none"
    )
    cfg = compose(["algo.loss=competing", "algo.negatives=none", "algo.label_input=none"])
    validate(cfg)
    assert goodness_eval_flops_per_example(cfg, 64, 10) * 10 == goodness_eval_flops_per_example(
        compose(), 64, 10
    )


def test_a_new_data_set_is_an_entry(monkeypatch):
    def few_digits(cfg):  # a loader DatasetConfig -> Splits: 400 of the digits to train on
        s = data.load_digits(cfg.val_size, 100, cfg.split_seed)
        x, y = s.x_train[:400], s.y_train[:400]
        return data.Splits("few", x, y, s.x_val, s.y_val, s.x_test, s.y_test, image_shape=(8, 8))

    monkeypatch.setitem(data.LOADERS, "few", few_digits)
    job = digits_job([*SMALL_FF, "dataset=few", "dataset.val_size=100", "trainer.epochs=1"])
    assert (job.data.name, len(job.data.x_train), len(job.data.x_test)) == ("few", 400, 100)
    history = []
    experiment.train(job, lambda step, metrics: history.append(metrics))
    assert len(history) == 1 and history[0]["train_loss"] > 0
