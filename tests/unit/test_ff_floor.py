"""FF at its memory floor (algo.step_each_layer): each layer steps right after its backward and
frees its gradients, and in the sequential schedule only the layer in training keeps optimizer
state. The arithmetic is the normal mode's, so the results are the same to the bit."""

import pytest
import torch
from helpers import ONE_THREAD, SMALL_FF, digits_job, make_trainable

from ffbench import experiment, ff

NET = ["algo=ff", "model.depth=3", "model.width=32", "trainer.epochs=2", ONE_THREAD]
OPTIMIZERS = {
    "adam": ["optimizer=adam"],
    "sgd": ["optimizer=sgd", "optimizer.momentum=0.9", "optimizer.lr=0.05"],
}


def trained(overrides) -> tuple[dict, list[dict], dict]:
    """(the learner's final state, every pass's metrics but its time, the final metrics but the
    times) of a job on the bundled digits."""
    job = digits_job(overrides)
    history = []
    final = experiment.train(job, lambda step, metrics: history.append(metrics))
    untimed = [{k: v for k, v in m.items() if k != "epoch_time_s"} for m in history]
    results = {k: v for k, v in final.items() if not k.endswith(("_time_s", "_per_s"))}
    return job.learner.state_dict(), untimed, results


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("schedule", ["simultaneous", "sequential"])
def test_the_floor_gives_the_normal_modes_results_to_the_bit(schedule, optimizer):
    base = [*NET, *OPTIMIZERS[optimizer], f"algo.schedule={schedule}"]
    state, history, final = trained(base)
    floor_state, floor_history, floor_final = trained([*base, "algo.step_each_layer=true"])
    assert floor_history == history
    assert floor_final == final
    assert state.keys() == floor_state.keys()
    for name, tensor in state.items():
        assert torch.equal(floor_state[name], tensor), name


def gradients_at_each_step(overrides, monkeypatch, layer=None) -> list[set[str]]:
    """The names of the parameters that hold a gradient at each optimizer step of a pass."""
    learner, optimizer = make_trainable(overrides, features=20)
    names = {id(p): name for name, p in learner.named_parameters()}
    seen = []

    def step(opt):
        seen.append({names[id(p)] for p in learner.parameters() if p.grad is not None})
        opt.step()

    monkeypatch.setattr(ff, "step", step)
    x, y = torch.rand(32, 20), torch.randint(0, 10, (32,))
    learner.train_epoch(x, y, optimizer, 16, layer)
    return seen


def test_at_most_one_layers_gradients_are_alive(monkeypatch):
    net = ["algo=ff", "model.depth=3", "model.width=16"]
    normal = gradients_at_each_step(net, monkeypatch)
    floor = gradients_at_each_step([*net, "algo.step_each_layer=true"], monkeypatch)
    layers = [{f"stack.layers.{i}.weight", f"stack.layers.{i}.bias"} for i in range(3)]
    readout = {"readout.weight", "readout.bias"}
    assert normal == [set().union(*layers, readout)] * 2  # one step per minibatch, all at once
    assert floor == [readout, *layers] * 2  # the read-out first: its input is freed at once


def test_sequential_floor_keeps_optimizer_state_of_the_layer_in_training_only():
    overrides = ["algo=ff", "model.depth=3", "model.width=16", "algo.schedule=sequential"]
    x, y = torch.rand(32, 20), torch.randint(0, 10, (32,))
    for floor, held in ((False, [[0], [0, 1], [0, 1, 2]]), (True, [[0], [1], [2]])):
        learner, optimizer = make_trainable([*overrides, f"algo.step_each_layer={floor}"])
        for layer in range(3):
            learner.train_epoch(x, y, optimizer, 16, layer)
            layers = [i for i, m in enumerate(learner.stack.layers) if m.weight in optimizer.state]
            assert layers == held[layer]
            assert learner.readout.weight in optimizer.state  # trained in every stage


def test_a_layer_starts_beside_the_trained_read_out_under_sgd_with_momentum():
    """Sequential: layer 1's first step comes with the read-out's third, one holding a momentum
    buffer and one not yet, in one parameter group (the read-out's step size is the layers'):
    torch's fused SGD cannot step the two together."""
    sgd = ["optimizer=sgd", "optimizer.momentum=0.9"]
    overrides = [*sgd, *SMALL_FF, "algo.readout=true", "algo.schedule=sequential"]
    weights = []
    for floor in ("false", "true"):
        learner, optimizer = make_trainable([*overrides, f"algo.step_each_layer={floor}"])
        x, y = torch.rand(32, 20), torch.randint(0, 10, (32,))
        for layer in learner.stages():
            learner.train_epoch(x, y, optimizer, 16, layer)
        weights.append(torch.cat([p.detach().flatten() for p in learner.parameters()]))
    torch.testing.assert_close(weights[1], weights[0], rtol=0, atol=0)
