"""trainer.lr_schedule through torch's LambdaLR: every pass trains at the initial learning
rate of each parameter group times the schedule's factor for that pass, also in FF's
sequential schedule (the factors start again for every layer) and after a checkpoint."""

import math

import pytest
import torch
from helpers import SMALL_FF, digits_job, make_trainable

from ffbench import experiment
from ffbench.config import compose
from ffbench.learner import weights_and_biases

OVERRIDES = [*SMALL_FF, "trainer.lr_schedule=linear_decay", "trainer.num_threads=1"]


def _rates(job) -> list[float]:
    return [group["lr"] for group in job.optimizer.param_groups]


def test_each_pass_trains_at_its_factor_of_the_initial_rates():
    job = digits_job([*OVERRIDES, "algo.schedule=sequential", "trainer.epochs=4"])
    initial = _rates(job)  # the hidden layers' 1e-3, the read-out's 0.01
    assert len(set(initial)) == 2
    factors = [
        experiment.linear_decay(e, 4, 0.0) for e in range(1, 5)
    ] * 3  # per layer: 1, 1, .75, .25
    seen = []

    def rates_of_the_pass(step, metrics):
        seen.append(_rates(job))
        assert metrics["lr_factor"] == factors[step - 1]

    experiment.train(job, rates_of_the_pass)
    assert seen == [[lr * f for lr in initial] for f in factors]


def test_a_resumed_job_trains_its_remaining_passes_at_their_rates(tmp_path):
    path = tmp_path / "checkpoint.pt"
    first = digits_job([*OVERRIDES, "trainer.epochs=4"])
    initial = _rates(first)

    def stop_after_three(step, metrics):
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        experiment.train(first, stop_after_three, checkpoint=path)
    second = digits_job([*OVERRIDES, "trainer.epochs=4"])
    start = experiment.load_checkpoint(path, second)
    seen = []
    experiment.train(second, lambda step, m: seen.append((step, _rates(second))), start=start)
    assert seen == [(4, [lr * experiment.linear_decay(4, 4, 0.0) for lr in initial])]


@pytest.mark.parametrize("algo", ["ff", "bp"])
def test_cosine_falls_from_the_rate_towards_its_floor_epoch_by_epoch(algo):
    """trainer.lr_schedule=cosine as torch's CosineAnnealingLR(T_max=epochs, eta_min=floor x
    lr): 0.08 in epoch 1, then down a half cosine, 0.008 + 0.072 (1 + cos(pi (e-1)/4)) / 2."""
    overrides = [f"algo={algo}", "model.depth=2", "model.width=16", "trainer.num_threads=1"]
    overrides += ["optimizer=adamw", "optimizer.lr=0.08", "optimizer.weight_decay=5e-4"]
    overrides += ["trainer.lr_schedule=cosine", "trainer.lr_floor=0.1", "trainer.epochs=4"]
    overrides += ["algo.readout=false"] if algo == "ff" else []
    job = digits_job(overrides)
    assert isinstance(job.optimizer, torch.optim.AdamW)
    seen = []
    experiment.train(job, lambda step, metrics: seen.append(_rates(job)[0]))
    expected = [0.008 + 0.072 * (1 + math.cos(math.pi * e / 4)) / 2 for e in range(4)]
    assert seen == pytest.approx(expected, rel=1e-12)
    assert seen[0] == pytest.approx(0.08) and seen[-1] == pytest.approx(0.008 + 0.072 * 0.1464466)
    # torch's own scheduler gives the same rates
    p = torch.nn.Parameter(torch.zeros(1))
    reference = torch.optim.AdamW([p], lr=0.08)
    annealing = torch.optim.lr_scheduler.CosineAnnealingLR(reference, T_max=4, eta_min=0.008)
    torch_rates = []
    for _ in range(4):
        torch_rates.append(reference.param_groups[0]["lr"])
        reference.step()
        annealing.step()
    assert seen == pytest.approx(torch_rates, rel=1e-12)


def test_one_adamw_over_the_layers_steps_each_layer_as_its_own_adamw_would():
    """DeeperForward and ASGE give each layer its own AdamW: ffbench's one optimizer over every
    layer's tensors is the same arithmetic (Adam's moments and step count are per tensor, and
    FF's layers never share a gradient), so the per-layer optimizers need no option."""
    overrides = [*SMALL_FF, "algo.readout=false", "optimizer=adamw", "optimizer.lr=0.01"]
    overrides += ["optimizer.weight_decay=0.01"]
    one, optimizer = make_trainable(overrides)
    apart, _ = make_trainable(overrides)
    settings = compose(overrides).optimizer
    per_layer = [  # one optimizer per layer, as the papers do
        experiment.make_optimizer(weights_and_biases(layer), settings)
        for layer in apart.stack.layers
    ]
    x, y = torch.rand(64, 20), torch.randint(0, 10, (64,))
    for epoch in range(3):
        torch.manual_seed(epoch)  # the same minibatches and negative labels for both
        one.train_epoch(x, y, optimizer, 16)
        torch.manual_seed(epoch)
        apart.train_epoch(x, y, _Each(per_layer), 16)
    for a, b in zip(one.stack.parameters(), apart.stack.parameters(), strict=True):
        assert torch.equal(a, b)
    assert not torch.equal(
        one.stack.layers[0].weight, make_trainable(overrides)[0].stack.layers[0].weight
    )


class _Each:
    """Several optimizers behind one optimizer's interface (zero_grad, step)."""

    def __init__(self, optimizers):
        self.optimizers = optimizers

    def zero_grad(self, set_to_none: bool = True) -> None:
        for o in self.optimizers:
            o.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        for o in self.optimizers:
            o.step()
