"""Total tensor memory of training (measure.LiveTensors, measure.total=true): every storage an op
allocates, counted once while it lives, and the breakdown at the peak, against what
analytic.total_bytes predicts from the shapes."""

import sys

import pytest
import torch
from helpers import CPU, REPO, digits_job, make_trainable

from ffbench import experiment
from ffbench.analytic import total_bytes
from ffbench.config import compose
from ffbench.measure import MB, LiveTensors, PeakMemory, SavedTensors

sys.path.insert(0, str(REPO / "benchmarks"))
import total_memory  # noqa: E402  benchmarks/total_memory.py

SETTINGS = {
    "bp": ["algo=bp"],
    "ff": ["algo=ff"],
    "ff_floor": ["algo=ff", "algo.step_each_layer=true"],
    "ff_floor_sequential": ["algo=ff", "algo.step_each_layer=true", "algo.schedule=sequential"],
    "ff_accum": ["algo=ff", "trainer.grad_accum_steps=4"],
    "ff_floor_sequential_accum": [
        "algo=ff",
        "algo.step_each_layer=true",
        "algo.schedule=sequential",
        "trainer.grad_accum_steps=4",
    ],
}
OPTIMIZERS = {"adam": ["optimizer=adam"], "sgd": ["optimizer=sgd", "optimizer.momentum=0.9"]}


def test_each_new_storage_counts_once_while_it_lives_and_views_allocate_nothing():
    weight = torch.nn.Parameter(torch.rand(10, 10))  # 400 bytes
    saved = SavedTensors([weight])
    with LiveTensors([weight], None, saved) as live:
        assert live.live_bytes == 400
        a = torch.ones(100)  # 400 bytes
        b = a.view(10, 10)  # a view: no new storage
        b += 1  # in place: none either
        c = a * 2  # 400 more
        assert live.live_bytes == 1200 and live.peak_bytes == 1200
        del a, b  # the last tensors on a's storage
        assert live.live_bytes == 800
        del c
        assert live.live_bytes == 400
    assert live.at_peak == {
        "param": 400,
        "grad": 0,
        "optimizer_state": 0,
        "saved_activations": 0,
        "other": 800,
    }


def measured(overrides, features=20, batch=16, net=("model.width=24", "model.depth=3")) -> tuple:
    learner, optimizer = make_trainable([*overrides, *net], features)
    x, y = torch.rand(2 * batch, features), torch.randint(0, 10, (2 * batch,))
    memory = PeakMemory(CPU, learner.parameters(), optimizer, total=True)
    for layer in learner.stages():
        with memory:
            learner.train_epoch(x, y, optimizer, batch, layer)
    return memory, learner, optimizer


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("setting", SETTINGS)
def test_parameters_and_optimizer_state_at_the_peak_equal_the_prediction(setting, optimizer):
    overrides = [*SETTINGS[setting], *OPTIMIZERS[optimizer]]
    memory, learner, opt = measured(overrides)
    predicted = total_bytes(compose([*overrides, "model.width=24", "model.depth=3"]), 20, 10, 16)
    at_peak = memory.tensors.at_peak
    assert at_peak["param"] == predicted["param"]
    assert at_peak["optimizer_state"] == predicted["optimizer_state"]
    assert memory.tensors.peak_bytes == sum(at_peak.values())
    # between steps: the parameters, the state and (but at the floor) every gradient
    grads = sum(p.grad.nbytes for p in learner.parameters() if p.grad is not None)
    state = sum(v.nbytes for s in opt.state.values() for v in s.values())
    assert memory.tensors.live_bytes == predicted["param"] + state + grads
    assert (grads == 0) == ("floor" in setting)


def test_the_floor_holds_less_than_ff_and_sequentially_less_still():
    peaks = {name: measured(SETTINGS[name])[0].tensors.peak_bytes for name in SETTINGS}
    assert peaks["ff_floor_sequential"] < peaks["ff_floor"] < peaks["ff"]


LEAN_BP = {
    "bp": ["algo=bp"],
    "bp_ckpt": ["algo=bp_ckpt"],
    "bp_accum": ["algo=bp", "trainer.grad_accum_steps=4"],
    "bp_ckpt_accum": ["algo=bp_ckpt", "trainer.grad_accum_steps=4"],
}


def test_lean_bp_holds_what_is_predicted_and_in_the_predicted_order():
    """Checkpointing, micro-batches and both, where activations outweigh the parameters
    (batch 128 on 4 x 64): each micro-batch's graph alone is held, to the predicted byte."""
    net = ("model.width=64", "model.depth=4")
    totals, predicted = {}, {}
    for name, overrides in LEAN_BP.items():
        memory, _, _ = measured(overrides, batch=128, net=net)
        parts = total_bytes(compose([*overrides, *net]), 20, 10, 128)
        assert memory.saved.peak_bytes == parts["saved_activations"], name
        totals[name], predicted[name] = memory.tensors.peak_bytes, parts["total"]
    order = ["bp", "bp_ckpt", "bp_accum", "bp_ckpt_accum"]  # the largest first
    assert sorted(predicted, key=predicted.get, reverse=True) == order
    assert sorted(totals, key=totals.get, reverse=True) == order
    assert totals["bp_ckpt_accum"] < 0.7 * totals["bp"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device to read the allocator of")
def test_on_cuda_the_total_is_the_allocators_and_the_count_gives_its_parts():
    overrides = ["algo=bp", "optimizer=adam", "model.width=24", "model.depth=3"]
    cfg = compose(overrides)
    cuda = torch.device("cuda")
    torch.manual_seed(0)
    learner = experiment.build_learner(cfg, 20, 10, (20,), cuda)
    optimizer = experiment.make_optimizer(learner.param_groups(), cfg.optimizer)
    x, y = torch.rand(32, 20, device=cuda), torch.randint(0, 10, (32,), device=cuda)
    memory = PeakMemory(cuda, learner.parameters(), optimizer, total=True)
    with memory:
        learner.train_epoch(x, y, optimizer, 16)
    figures = memory.metrics()
    predicted = total_bytes(cfg, 20, 10, 16)
    at_peak = memory.tensors.at_peak
    # the count sees the device's ops, backward's (autograd's device thread) included
    assert at_peak["param"] == predicted["param"]
    assert at_peak["optimizer_state"] == predicted["optimizer_state"]
    grads = sum(p.grad.nbytes for p in learner.parameters())
    assert memory.tensors.live_bytes == predicted["param"] + predicted["optimizer_state"] + grads
    # the allocator holds every counted storage (rounded up to its blocks), the data set apart
    assert figures["peak_total_counted_mb"] == memory.tensors.peak_bytes / MB
    assert figures["peak_total_mb"] >= figures["peak_total_counted_mb"]
    assert figures["peak_total_mb"] < figures["peak_cuda_allocated_mb"]


def test_the_floor_is_predicted_under_half_of_bp_on_the_papers_net():
    """4 x 2000 at batch 100, Adam: predicted 101.33 against 213.87 MiB (measured 103.15 and
    208.52 by benchmarks/total_memory.py; docs/memory.md)."""
    net = ["model.width=2000", "model.depth=4", "optimizer=adam"]
    floor = total_bytes(compose([*net, *SETTINGS["ff_floor_sequential"]]), 784, 10, 100)
    bp = total_bytes(compose([*net, *SETTINGS["bp"]]), 784, 10, 100)
    assert (floor["total"], bp["total"]) == (106248936, 224256204)
    assert floor["total"] / bp["total"] < 0.5


@pytest.mark.parametrize("model", ["conv", "local"])
def test_the_prediction_refuses_a_spatial_net_rather_than_price_it_as_an_mlp(model):
    """Only the MLP is modelled: a conv net's total is measured (measure.total), never given
    the figures of an MLP of the default width."""
    with pytest.raises(ValueError, match=f"cover model=mlp only, not {model}"):
        total_bytes(compose([f"model={model}", "model.channels=[4,8]", "model.depth=2"]), 64, 10, 8)


def test_the_memory_page_is_what_the_headline_nets_records_give():
    assert total_memory.main(["--docs", "--check", "--root", str(REPO)]) == 0


def test_a_variant_keeps_the_nets_results_where_its_arithmetic_is_the_same():
    def keeps(preset, *variant):
        return total_memory.keeps_results(compose(preset), compose([*preset, *variant]))

    cwc = ["+experiment=best_ff_mnist"]
    assert keeps(cwc, "algo.step_each_layer=true")  # bit for bit
    assert keeps(cwc, "trainer.grad_accum_steps=4")  # each example's loss is its own
    assert keeps(cwc, "algo=bp_ckpt", "trainer.grad_accum_steps=4")
    assert not keeps(cwc, "algo.step_each_layer=true", "algo.schedule=sequential")
    assert not keeps(cwc, "trainer.grad_accum_steps=4", "model.batch_norm=true")
    assert not keeps(["+experiment=hinton_mnist"], "trainer.grad_accum_steps=4")  # negatives


@pytest.mark.parametrize(
    "overrides",
    [
        ["algo=ff"],  # read-out, hard negatives
        ["algo=ff", "algo.step_each_layer=true", "algo.schedule=sequential"],  # a stage a layer
        ["algo=bp", "trainer.grad_accum_steps=4"],
        ["algo=ff", "algo.layer_windows=[[1,2],[1,3]]"],  # stages (0, 1), then (1,)
        ["+experiment=mnist_conv", "dataset=digits", "model.channels=[10,20]", "model.depth=2"],
    ],
    ids=["ff", "ff_floor_sequential", "bp_accum", "ff_windows", "ff_cwc_conv"],
)
def test_the_first_pass_of_each_stage_holds_the_peak_of_every_pass(overrides, monkeypatch):
    """Every run counts its total in the first pass of each stage only (the count is slow):
    training counted in every pass reaches the same peak, part for part, to the byte."""
    found, counted = [], []
    enter = LiveTensors.__enter__
    monkeypatch.setattr(LiveTensors, "__enter__", lambda self: counted.append(1) or enter(self))
    for every_pass in (True, False):
        job = digits_job([*overrides, "trainer.epochs=3", "trainer.batch_size=256"])
        params = job.learner.parameters()
        memory = PeakMemory(CPU, params, job.optimizer, total=True, every_pass=every_pass)
        experiment.train(job, lambda step, metrics: None, memory)
        found.append((memory.tensors.peak_bytes, memory.tensors.at_peak, len(counted)))
        counted.clear()
    (every, every_parts, passes), (first, first_parts, stages) = found
    assert (first, first_parts) == (every, every_parts)
    assert stages == len({layer for layer, _ in experiment.training_plan(job)}) < passes
