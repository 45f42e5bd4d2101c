"""trainer.lr_schedule through torch's LambdaLR: every pass trains at the initial learning
rate of each parameter group times the schedule's factor for that pass, also in FF's
sequential schedule (the factors start again for every layer) and after a checkpoint."""

import pytest
from helpers import SMALL_FF, digits_job

from ffbench import experiment

OVERRIDES = [*SMALL_FF, "trainer.lr_schedule=linear_decay", "trainer.num_threads=1"]


def _rates(job) -> list[float]:
    return [group["lr"] for group in job.optimizer.param_groups]


def test_each_pass_trains_at_its_factor_of_the_initial_rates():
    job = digits_job([*OVERRIDES, "algo.schedule=sequential", "trainer.epochs=4"])
    initial = _rates(job)  # the hidden layers' 1e-3, the read-out's 0.01
    assert len(set(initial)) == 2
    factors = [experiment.linear_decay(e, 4) for e in range(1, 5)] * 3  # per layer: 1, 1, .75, .25
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
    assert seen == [(4, [lr * experiment.linear_decay(4, 4) for lr in initial])]
