"""Behaviour of the pieces of FF and BP, on hand-made tensors and tiny nets."""

import sys

import pytest
import torch
import torch.nn.functional as F
from helpers import CPU, SMALL_FF, make_learner, make_trainable

from ffbench import measure
from ffbench.activations import ACTIVATIONS, NORMALISATIONS
from ffbench.ff_data import embed_labels, random_wrong_labels
from ffbench.goodness import GOODNESS, default_theta, threshold_loss
from ffbench.measure import MB, PeakMemory


def test_wrong_labels_are_never_the_true_label_and_cover_all_others():
    torch.manual_seed(0)
    y = torch.arange(10).repeat(5000)
    wrong = random_wrong_labels(y, 10)
    assert not (wrong == y).any()
    for label in range(10):
        drawn = wrong[y == label]
        counts = torch.bincount(drawn, minlength=10).float()
        assert counts[label] == 0
        others = counts[torch.arange(10) != label]
        assert others.min() > 0.8 * others.mean()  # roughly uniform over the 9 wrong labels


def test_label_embedding_overwrites_only_the_first_pixels():
    x = torch.full((3, 12), 0.5)
    out = embed_labels(x, torch.tensor([0, 4, 9]), 10, strength=1.0)
    assert out[:, :10].sum(1).tolist() == [1.0, 1.0, 1.0]
    assert out[1, 4] == 1.0 and out[2, 9] == 1.0
    assert torch.equal(out[:, 10:], x[:, 10:]) and x[0, 0] == 0.5  # input untouched


def test_goodness_loss_and_normalisation_values():
    a = torch.tensor([[1.0, -2.0, 3.0]])
    assert GOODNESS["sumsq"](a).item() == 14.0
    assert torch.allclose(NORMALISATIONS["mean_square"](a).pow(2).mean(), torch.tensor(1.0))
    assert torch.allclose(NORMALISATIONS["unit_length"](a).norm(), torch.tensor(1.0))
    loss = threshold_loss(torch.tensor([3.0]), torch.tensor([1.0]), theta=2.0)
    assert torch.allclose(loss, F.softplus(torch.tensor(-1.0)))  # both terms equal here
    assert default_theta("sumsq", 500, "mean_square", inputs=784) == 500.0
    assert default_theta("sumsq", 500, "unit_length", inputs=784) == 500 / 784
    assert ACTIVATIONS["relu"](torch.tensor([-1.0, 2.0])).tolist() == [0.0, 2.0]


def _one_step(overrides, layers, lr=0.1):
    """A fresh FF net after one train_step on fixed data and the step: (net, weights before)."""
    ff, _ = make_trainable([*SMALL_FF, "optimizer=sgd", "optimizer.momentum=0", *overrides])
    optimizer = torch.optim.SGD(ff.param_groups(), lr=lr)
    before = [p.detach().clone() for p in ff.stack.parameters()]
    torch.manual_seed(1)
    x, y = torch.rand(8, 20), torch.randint(0, 10, (8,))
    ff.train_step(x, y, optimizer, layers)  # the gradients; train_epoch steps
    optimizer.step()
    return ff, before


@pytest.mark.parametrize("overrides", [[], ["algo.peer_norm=0.03"], ["algo.loss=symba"]])
def test_each_ff_layer_is_updated_by_its_own_loss_alone(overrides):
    """train_step's gradient of every layer, with all three layers trained at once, equals the
    gradient that layer gets when it alone is trained on the same minibatch (lower layers
    frozen, upper ones absent): no loss of another layer reaches it. The SGD update is then
    exactly -lr times that gradient."""
    full, before = _one_step(overrides, range(3))
    for k in range(3):
        alone, _ = _one_step(overrides, range(k, k + 1))
        for p_full, p_alone in zip(
            full.stack.layers[k].parameters(), alone.stack.layers[k].parameters(), strict=True
        ):
            assert p_full.grad.abs().sum() > 0
            assert torch.allclose(p_full.grad, p_alone.grad, atol=1e-7), f"layer {k}"
    for b, p in zip(before, full.stack.parameters(), strict=True):
        assert torch.allclose(p, b - 0.1 * p.grad, atol=1e-7)


def test_bp_trains_the_first_layer_through_every_layer_above():
    """BP's contrast: its first layer has no loss of its own, its gradient comes from the
    output through every layer, and changes when an upper layer's weights change."""
    bp, _ = make_trainable(["algo=bp", "model.depth=3", "model.width=16"])
    x, y = torch.rand(8, 20), torch.randint(0, 10, (8,))

    def first_layer_grad():
        bp.zero_grad()
        F.cross_entropy(bp.net(x), y).backward()
        return bp.stack.layers[0].weight.grad.clone()

    grad = first_layer_grad()
    assert grad.abs().sum() > 0
    with torch.no_grad():
        # (not a rescaling: with zero biases the next normalisation would undo it)
        bp.stack.layers[2].weight.add_(torch.randn_like(bp.stack.layers[2].weight))
    assert not torch.allclose(first_layer_grad(), grad)


def test_ff_statistics_are_named_per_layer():
    ff, optimizer = make_trainable([*SMALL_FF, "algo.readout=true"])
    metrics = ff.train_epoch(torch.rand(64, 20), torch.randint(0, 10, (64,)), optimizer, 16)
    per_layer = ("loss", "goodness_pos", "goodness_neg", "separation")
    names = {f"layer{i}_{stat}" for i in range(3) for stat in per_layer}
    assert set(metrics) == names | {"readout_loss", "train_loss"}
    assert metrics["train_loss"] == pytest.approx(sum(metrics[f"layer{i}_loss"] for i in range(3)))
    assert all(0 <= metrics[f"layer{i}_separation"] <= 1 for i in range(3))


@pytest.mark.parametrize("skip_first", [True, False])
def test_batched_label_goodness_matches_the_naive_loop(skip_first):
    ff = make_learner([*SMALL_FF, f"algo.eval_skip_first={skip_first}"])
    x = torch.rand(7, 20)
    batched = ff.label_goodness(x)
    first = 1 if skip_first else 0
    for label in range(10):
        h = embed_labels(x, torch.full((7,), label), 10, 1.0)
        activities = ff.stack(h)
        naive = sum(GOODNESS["sumsq"](a) for a in activities[first:])
        assert torch.allclose(batched[:, label], naive, rtol=1e-5)
    assert torch.equal(ff.predict_all(x)["goodness"], batched.argmax(1))


@pytest.mark.parametrize(
    "overrides",
    [
        SMALL_FF,
        [*SMALL_FF, "algo.negatives=hard_label", "algo.evaluation=readout", "algo.peer_norm=0.03"],
        ["algo=bp", "model.depth=3", "model.width=16"],
        ["algo=bp_ckpt", "model.depth=3", "model.width=16"],
    ],
    ids=["ff", "ff-readout-peer", "bp", "bp_ckpt"],
)
def test_one_state_dict_saves_the_whole_learner(overrides, tmp_path):
    """Trained, saved, loaded into a learner built with another seed: the same predictions
    by every evaluation (FF's read-out and peer-normalisation state included)."""
    learner, optimizer = make_trainable(overrides)
    x, y = torch.rand(64, 20), torch.randint(0, 10, (64,))
    learner.train_epoch(x, y, optimizer, 16)
    keys = set(learner.state_dict())
    assert {f"layers.{i}.weight" for i in range(3)} <= {k.split("stack.", 1)[-1] for k in keys}
    if "algo=bp" not in overrides[0]:
        assert "readout.weight" in keys
    torch.save(learner.state_dict(), tmp_path / "learner.pt")
    other = make_learner(overrides, seed=1)
    other.load_state_dict(torch.load(tmp_path / "learner.pt"))
    predictions = learner.predict_all(x)
    assert predictions
    for name, labels in other.predict_all(x).items():
        assert torch.equal(labels, predictions[name]), name


def test_ff_learns_a_separable_toy_problem():
    torch.manual_seed(0)
    ff, optimizer = make_trainable(
        ["algo=ff", "model.depth=2", "model.width=64", "optimizer.lr=0.01"], 40
    )
    y = torch.randint(0, 10, (512,))
    x = torch.rand(512, 40) * 0.1
    x[torch.arange(512), 10 + y] += 1.0  # class shows as one bright feature
    for _ in range(20):
        ff.train_epoch(x, y, optimizer, 64)
    for labels in ff.predict_all(x).values():
        assert (labels == y).float().mean() > 0.9


@pytest.mark.parametrize("method", ["vmhwm", "sampled", "ru_maxrss_not_reset"])
def test_peak_memory_is_reset_for_each_job(method, monkeypatch, tmp_path):
    """Each way of reading the resident peak, forced in turn: the two that can be reset give
    a job after a 64 MiB one a figure at least 50 MB lower; the lifetime peak, which cannot,
    says so by its name and never drops. Every figure covers the allocation."""
    if method == "vmhwm":
        with PeakMemory(CPU) as probe:
            pass
        if probe.method != "vmhwm":
            pytest.skip("/proc/self/clear_refs cannot reset the high-water mark here")
    if method in ("sampled", "ru_maxrss_not_reset"):
        monkeypatch.setattr(measure, "_CLEAR_REFS", tmp_path / "no" / "clear_refs")
    if method == "ru_maxrss_not_reset":
        monkeypatch.setattr(measure, "_STATUS", tmp_path / "no" / "status")
        monkeypatch.setattr(measure, "_STATM", tmp_path / "no" / "statm")
        monkeypatch.setitem(sys.modules, "psutil", None)  # as if psutil were not installed
    with PeakMemory(CPU) as first:
        big = torch.ones(64 * MB // 4)  # 64 MiB
        big += 1
    del big
    with PeakMemory(CPU) as second:
        pass
    assert (first.method, second.method) == (method, method)
    assert first.peak_rss_mb > 64
    if method == "ru_maxrss_not_reset":
        assert second.peak_rss_mb >= first.peak_rss_mb
    else:
        assert first.peak_rss_mb - second.peak_rss_mb > 50
