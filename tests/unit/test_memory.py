"""Memory figures: the saved-activation counter, its agreement with the analytical prediction,
FF against BP as depth grows, the RSS fallbacks. What a run and a depth sweep record is in
tests/app/test_memory.py."""

import sys
import threading

import pytest
import torch
import torch.nn.functional as F
from helpers import CPU, make_learner, make_trainable

from ffbench import measure
from ffbench.analytic import saved_activation_bytes
from ffbench.measure import MB, PeakMemory, SavedTensors


def net(algo, width, depth, activation="relu", norm="mean_square", accum=1) -> list[str]:
    """The overrides of a `depth` x `width` net trained by `algo`."""
    overrides = [f"algo={algo}", f"model.width={width}", f"model.depth={depth}"]
    overrides += [
        f"activation={activation}",
        f"model.norm={norm}",
        f"trainer.grad_accum_steps={accum}",
    ]
    return overrides


def measured_bytes(algo, batch, width, depth, features, **kwargs) -> int:
    learner, optimizer = make_trainable(net(algo, width, depth, **kwargs), features)
    x, y = torch.rand(batch, features), torch.randint(0, 10, (batch,))
    with PeakMemory(CPU, learner.parameters()) as memory:
        learner.train_epoch(x, y, optimizer, batch)
    assert memory.saved.live_bytes == 0  # every graph was freed by its backward pass
    return memory.saved.peak_bytes


def test_each_storage_counts_once_and_stops_counting_when_its_graph_is_freed():
    a = torch.rand(1000, requires_grad=True)  # 4000 bytes
    with SavedTensors() as saved:
        b = a.exp()  # saves its output b
        c = b.exp()  # saves c; b is already counted
        assert saved.live_bytes == 8000
        s, t = a.sin(), a.cos()  # both save a: one storage, counted once
        assert saved.live_bytes == 12000
        (c.sum() + s.sum() + t.sum()).backward()
        assert saved.live_bytes == 0 and saved.peak_bytes == 12000
        d = a.exp()
        assert saved.live_bytes == 4000
        del d  # dropping a graph without backward releases it too
        assert saved.live_bytes == 0
    e = a.exp()  # outside the block nothing is counted
    assert saved.peak_bytes == 12000 and saved.live_bytes == 0
    del e


def test_parameters_are_not_counted():
    layer = torch.nn.Linear(100, 50)
    x = torch.rand(8, 100, requires_grad=True)
    with SavedTensors(layer.parameters()) as saved:
        layer(x).sum().backward()  # saves x (for the weight) and the weight (for x)
    assert saved.peak_bytes == 8 * 100 * 4


@pytest.mark.parametrize("algo", ["ff", "bp", "bp_ckpt"])
@pytest.mark.parametrize(
    "activation, norm", [("relu", "mean_square"), ("gelu", "unit_length"), ("tanh", "none")]
)
@pytest.mark.parametrize("depth", [1, 3])
def test_measured_saved_activations_equal_the_prediction_to_the_byte(algo, activation, norm, depth):
    for batch, width, features in ((8, 16, 20), (5, 30, 12)):
        measured = measured_bytes(
            algo, batch, width, depth, features, activation=activation, norm=norm
        )
        predicted = saved_activation_bytes(
            algo, batch, width, depth, features, activation=activation, norm=norm
        )
        assert measured == predicted, (batch, width, features)


@pytest.mark.parametrize("depth", [1, 3])
def test_channelwise_competitive_ff_saves_the_positives_alone_as_predicted(depth):
    """algo.loss=cwc has no negatives: one row per example, and cross-entropy over the class
    goodness in place of the threshold loss's number per row."""
    cwc = ["algo.loss=cwc", "algo.label_input=none", "algo.negatives=none", "algo.readout=false"]
    for batch, width, features in ((8, 20, 30), (5, 40, 12)):
        learner, optimizer = make_trainable([*net("ff", width, depth), *cwc], features)
        x, y = torch.rand(batch, features), torch.randint(0, 10, (batch,))
        with PeakMemory(CPU, learner.parameters()) as memory:
            learner.train_epoch(x, y, optimizer, batch)
        predicted = saved_activation_bytes("ff", batch, width, depth, features, loss="cwc")
        assert memory.saved.peak_bytes == predicted, (batch, width, features)


def test_bp_grows_linearly_with_depth_while_ff_stays_flat():
    """MNIST-like: the input (784) is wider than the hidden layers, as in the paper's nets."""
    depths = (1, 2, 4, 8)
    ff = [measured_bytes("ff", 8, 64, d, 784) for d in depths]
    bp = [measured_bytes("bp", 8, 64, d, 784) for d in depths]
    ckpt = [measured_bytes("bp_ckpt", 8, 64, d, 784) for d in depths]
    assert ff[-1] / ff[0] < 1.2
    # Each added layer adds the same bytes, a straight line in depth: for BP its activation,
    # normalised copy and per-row norm (8 rows of 4-byte floats); for checkpointed BP its input.
    for series, per_layer in ((bp, 4 * 8 * (2 * 64 + 1)), (ckpt, 4 * 8 * 64)):
        for d, value in zip(depths, series, strict=True):
            assert value == series[0] + per_layer * (d - 1)
    assert ff[-1] < bp[-1]


def test_gradient_accumulation_gives_the_same_update_at_a_micro_batch_memory():
    x, y = torch.rand(12, 20), torch.randint(0, 10, (12,))
    weights = []
    for accum in (1, 4):
        sgd = ["optimizer=sgd", "optimizer.lr=0.1", "optimizer.momentum=0"]
        learner, optimizer = make_trainable([*net("bp", 16, 3, accum=accum), *sgd], 20)
        learner.train_epoch(x, y, optimizer, 12)
        weights.append(torch.cat([p.flatten() for p in learner.parameters()]))
    assert torch.allclose(weights[0], weights[1], atol=1e-6)
    assert measured_bytes("bp", 12, 16, 3, 20, accum=4) == saved_activation_bytes(
        "bp", 3, 16, 3, 20
    )


def test_checkpointed_bp_computes_the_same_gradients_as_bp():
    x, y = torch.rand(8, 20), torch.randint(0, 10, (8,))
    grads = []
    for algo in ("bp", "bp_ckpt"):
        learner = make_learner(net(algo, 16, 3), 20)
        F.cross_entropy(learner.net(x), y).backward()
        grads.append(torch.cat([p.grad.flatten() for p in learner.parameters()]))
    assert torch.allclose(grads[0], grads[1])


def test_peak_rss_falls_back_to_sampling_without_clear_refs(monkeypatch, tmp_path):
    monkeypatch.setattr(measure, "_CLEAR_REFS", tmp_path / "no" / "clear_refs")
    threads = threading.active_count()
    with PeakMemory(CPU) as memory:
        big = torch.ones(64 * MB // 4)  # 64 MiB, touched
        big += 1
        del big
    assert memory.method == "sampled"
    assert memory.peak_rss_mb > 64
    assert threading.active_count() == threads  # the sampler is stopped


def test_peak_rss_without_any_proc_file_still_gives_a_figure(monkeypatch, tmp_path):
    for name in ("_STATUS", "_CLEAR_REFS", "_STATM"):
        monkeypatch.setattr(measure, name, tmp_path / "no" / name)
    monkeypatch.setitem(sys.modules, "psutil", None)  # as if psutil were not installed
    with PeakMemory(CPU) as memory:
        torch.ones(1000).sum()
    assert memory.method == "ru_maxrss_not_reset"
    assert memory.peak_rss_mb > 50  # the process's lifetime peak: torch alone is above that


def test_sequential_ff_holds_one_layer_and_caches_nothing():
    """Training layer k alone recomputes the frozen layers below without a graph: the peak is
    that one layer's, and nothing is left alive between minibatches."""
    batch, width, features = 16, 32, 64
    learner, optimizer = make_trainable(net("ff", width, 4), features)
    x, y = torch.rand(4 * batch, features), torch.randint(0, 10, (4 * batch,))
    with PeakMemory(CPU, learner.parameters()) as memory:
        learner.train_epoch(x, y, optimizer, batch, layer=3)
    assert memory.saved.live_bytes == 0
    # the top layer's input is `width` wide: the same as a two-layer net on `width` features
    assert memory.saved.peak_bytes == saved_activation_bytes("ff", batch, width, 2, width)
