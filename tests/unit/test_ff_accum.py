"""FF over micro-batches (trainer.grad_accum_steps): each layer's gradient summed over the parts
of a minibatch, one step, as BP's accumulation does. Where each example's loss is its own (no
batch statistics, no random negatives) the update is the whole minibatch's, up to the order of
float sums; the activations held are one micro-batch's."""

import pytest
import torch
from helpers import CPU, make_trainable

from ffbench.analytic import total_bytes
from ffbench.config import compose, validate
from ffbench.errors import FFBenchError
from ffbench.measure import PeakMemory

# Channel-wise competitive FF on an MLP, with the read-out and the softmax head: every kind
# of gradient FF makes (autograd per layer, set_gradient in closed form) adds up.
CWC = [
    "algo=ff",
    "algo.loss=cwc",
    "algo.label_input=none",
    "algo.negatives=none",
    "algo.readout=true",
    "algo.predictor=softmax",
    "model.depth=3",
    "model.width=20",
    "optimizer=sgd",
    "optimizer.lr=0.1",
]
SCHEDULES = {
    "simultaneous": [],
    "floor, sequential": ["algo.schedule=sequential", "algo.step_each_layer=true"],
}


def weights_after_a_pass(overrides, accum: int, passes: int = 1) -> torch.Tensor:
    learner, optimizer = make_trainable([*overrides, f"trainer.grad_accum_steps={accum}"])
    x, y = torch.rand(48, 20), torch.randint(0, 10, (48,))
    for layer in learner.stages()[: passes * len(learner.stages())]:
        learner.train_epoch(x, y, optimizer, 24, layer)  # 2 minibatches, 4 parts of 6 each
    return torch.cat([p.detach().flatten() for p in learner.parameters()])


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_micro_batches_give_the_whole_minibatchs_update(schedule):
    overrides = [*CWC, *SCHEDULES[schedule]]
    whole, parts = weights_after_a_pass(overrides, 1), weights_after_a_pass(overrides, 4)
    assert not torch.equal(whole, weights_after_a_pass(overrides, 1, passes=0))  # it learned
    torch.testing.assert_close(parts, whole, rtol=0, atol=1e-6)


def test_each_part_holds_a_micro_batchs_activations_as_predicted():
    """Label-input FF (positives and negatives in one pass) on 4 x 64 at batch 128: the saved
    activations are a quarter batch's, to the predicted byte; the total falls with them."""
    net = ["algo=ff", "model.width=64", "model.depth=4"]
    peaks = {}
    for accum in (1, 4):
        overrides = [*net, f"trainer.grad_accum_steps={accum}"]
        learner, optimizer = make_trainable(overrides)
        x, y = torch.rand(256, 20), torch.randint(0, 10, (256,))
        memory = PeakMemory(CPU, learner.parameters(), optimizer, total=True)
        with memory:
            learner.train_epoch(x, y, optimizer, 128)
        predicted = total_bytes(compose(overrides), 20, 10, 128)
        assert memory.saved.peak_bytes == predicted["saved_activations"], accum
        peaks[accum] = memory.tensors.peak_bytes
    assert peaks[4] < peaks[1]


def test_the_floor_with_micro_batches_needs_the_sequential_schedule():
    cfg = compose(["algo=ff", "algo.step_each_layer=true", "trainer.grad_accum_steps=4"])
    with pytest.raises(
        FFBenchError, match="set algo.schedule=sequential .* or trainer.grad_accum_steps=1"
    ):
        validate(cfg)
