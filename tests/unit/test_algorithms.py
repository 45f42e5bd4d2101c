"""Behaviour of the pieces of FF and BP, on hand-made tensors and tiny nets."""

import sys

import pytest
import torch
import torch.nn.functional as F
from helpers import CPU, SMALL_FF, make_learner

from ffbench import measure
from ffbench.activations import ACTIVATIONS, NORMALISATIONS
from ffbench.bp import Backprop
from ffbench.ff import embed_labels, random_wrong_labels
from ffbench.goodness import GOODNESS, default_theta, threshold_loss
from ffbench.measure import MB, PeakMemory
from ffbench.models import LayerStack


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
    assert default_theta("sumsq", 500, "mean_square") == 500.0
    assert default_theta("sumsq", 500, "unit_length") == 1000.0
    assert ACTIVATIONS["relu"](torch.tensor([-1.0, 2.0])).tolist() == [0.0, 2.0]


def test_no_gradient_crosses_layers_in_ff_but_does_in_bp():
    ff = make_learner(SMALL_FF)
    x, y = torch.rand(8, 20), torch.randint(0, 10, (8,))
    ff.train_step(x, y, range(3))
    # each layer's gradient comes from its own loss alone: recompute layer 2's loss on the
    # detached output of layer 1 and compare it with what a full-graph loss would give
    stack = ff.model
    h = torch.cat([embed_labels(x, y, 10, 1.0)] * 2)
    a0 = stack.layer(0, h)
    a1 = stack.layer(1, a0.detach())
    loss1 = threshold_loss(GOODNESS["sumsq"](a1)[:8], GOODNESS["sumsq"](a1)[8:], 16.0)
    grads = torch.autograd.grad(loss1, list(stack.layers[0].parameters()), allow_unused=True)
    assert all(g is None for g in grads)
    bp = Backprop(LayerStack(20, 16, 3, ACTIVATIONS["relu"], "mean_square"), 10)
    loss = F.cross_entropy(bp.model(x), y)
    grads = torch.autograd.grad(loss, list(bp.model.stack.layers[0].parameters()))
    assert all(g.abs().sum() > 0 for g in grads)


def test_train_step_only_updates_through_local_losses():
    """After one step, a layer's update equals what its own loss alone would give."""
    ff = make_learner([*SMALL_FF, "model.depth=2"])
    before = [p.detach().clone() for p in ff.model.parameters()]
    torch.manual_seed(1)
    x, y = torch.rand(8, 20), torch.randint(0, 10, (8,))
    ff.train_step(x, y, range(2))
    assert all(not torch.equal(b, p) for b, p in zip(before, ff.model.parameters(), strict=True))


@pytest.mark.parametrize("skip_first", [True, False])
def test_batched_label_goodness_matches_the_naive_loop(skip_first):
    ff = make_learner([*SMALL_FF, f"algo.eval_skip_first={skip_first}"])
    x = torch.rand(7, 20)
    batched = ff.label_goodness(x)
    first = 1 if skip_first else 0
    for label in range(10):
        h = embed_labels(x, torch.full((7,), label), 10, 1.0)
        activities = ff.model(h)
        naive = sum(GOODNESS["sumsq"](a) for a in activities[first:])
        assert torch.allclose(batched[:, label], naive, rtol=1e-5)
    assert torch.equal(ff.predict_all(x)["goodness"], batched.argmax(1))


def test_state_dict_holds_every_layer_and_reloads_to_the_same_predictions(tmp_path):
    ff = make_learner(SMALL_FF)
    keys = set(ff.model.state_dict())
    assert {f"layers.{i}.weight" for i in range(3)} <= keys
    torch.save(ff.model.state_dict(), tmp_path / "ff.pt")
    other = make_learner(SMALL_FF)
    torch.nn.init.zeros_(other.model.layers[0].weight)
    other.model.load_state_dict(torch.load(tmp_path / "ff.pt"))
    x = torch.rand(30, 20)
    other.readout.load_state_dict(ff.readout.state_dict())
    for name, labels in ff.predict_all(x).items():
        assert torch.equal(other.predict_all(x)[name], labels), name


def test_ff_learns_a_separable_toy_problem():
    torch.manual_seed(0)
    ff = make_learner(["algo=ff", "model.depth=2", "model.width=64", "optimizer.lr=0.01"], 40)
    y = torch.randint(0, 10, (512,))
    x = torch.rand(512, 40) * 0.1
    x[torch.arange(512), 10 + y] += 1.0  # class shows as one bright feature
    for _ in range(20):
        ff.train_epoch(x, y, 64)
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
