"""The useful-FLOP count behind train_gflops_per_s and the speed benchmark, and the speed
options: no read-out, tf32, subnormals flushed. What a run records and bf16 autocast, which
train whole jobs, are in tests/app/test_speed.py; torch.compile in tests/e2e/test_speed.py."""

import pytest
import torch
from helpers import QUICK, SMALL_FF, digits_job, make_trainable

from ffbench import experiment
from ffbench.config import compose, validate
from ffbench.errors import FFBenchError
from ffbench.experiment import autocast
from ffbench.flops import (
    goodness_eval_flops_per_example,
    train_flops_per_example,
    train_matmul_shapes,
)

MACS = 64 * 32 + 32 * 32  # two hidden layers of 32 units on 64 features
HEAD = 32 * 10


@pytest.mark.parametrize(
    "overrides, expected",
    [
        # forward + weight gradient, positive and negative
        (["algo=ff", "algo.readout=false"], 8 * MACS),
        # the read-out's label-free pass and its own product and gradient (layer 2 only)
        (["algo=ff"], 8 * MACS + 2 * MACS + 4 * 32 * 10),
        # hard negatives: the read-out's forward once more, its beliefs choosing them
        (["algo=ff", "algo.negatives=hard_label"], 8 * MACS + 2 * MACS + 6 * 32 * 10),
        (
            ["algo=ff", "algo.schedule=sequential", "algo.readout=false"],
            (8 * 64 * 32 + 8 * 32 * 32 + 4 * 64 * 32) / 2,
        ),
        (["algo=bp"], 2 * MACS + 2 * 32 * 32 + 2 * MACS + 6 * HEAD),
        (["algo=bp_ckpt"], 2 * MACS + 2 * 32 * 32 + 2 * MACS + 6 * HEAD),  # recompute is overhead
    ],
)
def test_training_flops_per_example(overrides, expected):
    cfg = compose([*overrides, "model.depth=2", "model.width=32"])
    assert train_flops_per_example(cfg, 64, 10) == expected


def test_goodness_evaluation_flops_cover_every_label():
    cfg = compose(["model.depth=2", "model.width=32"])
    assert goodness_eval_flops_per_example(cfg, 64, 10) == 10 * 2 * MACS


def test_ff_without_readout_has_no_readout_pass_metric_or_prediction():
    ff, optimizer = make_trainable([*SMALL_FF, "algo.readout=false"])
    assert ff.readout is None and len(optimizer.param_groups) == 1  # no decay: one group
    x, y = torch.rand(64, 20), torch.randint(0, 10, (64,))
    metrics = ff.train_epoch(x, y, optimizer, 32)
    assert "readout_loss" not in metrics and "layer2_loss" in metrics
    assert set(ff.predict_all(x)) == {"goodness", "layer0", "layer1", "layer2"}  # no readout


@pytest.mark.parametrize("needs", ["algo.evaluation=readout", "algo.negatives=hard_label"])
def test_readout_off_is_refused_where_the_readout_is_needed(needs):
    cfg = compose(["algo.readout=false", needs])
    with pytest.raises(FFBenchError, match=f"{needs} needs the read-out: set algo.readout=true"):
        validate(cfg)


def test_tf32_without_cuda_says_what_to_set():
    with pytest.raises(FFBenchError, match="trainer.precision=tf32 needs a CUDA device"):
        digits_job([*QUICK, "trainer.precision=tf32", "trainer.device=cpu"])


def test_subnormal_floats_are_flushed_for_speed():
    """The flag is process-wide and an earlier job may have set it: clear it, then prepare a
    job, which must set it itself."""
    torch.set_flush_denormal(False)
    assert torch.tensor(1e-40).item() != 0.0  # kept while nothing flushes
    digits_job(QUICK)
    assert torch.tensor(1e-40).item() == 0.0  # a subnormal float32 becomes zero


@pytest.mark.parametrize("algo", ["ff", "bp"])
def test_bf16_steps_never_compute_with_an_earlier_steps_weights(algo):
    """experiment.autocast caches the bf16 copy of each weight; learner.step drops it after every
    update. Training under it gives the very weights that training without any cache gives."""
    trained = []
    for cached in (True, False):
        job = digits_job([*QUICK, f"algo={algo}", "trainer.precision=bf16"])
        start = torch.cat([p.detach().flatten() for p in job.learner.parameters()])
        context = (
            autocast(job.cfg.trainer, job.device)
            if cached
            else torch.autocast("cpu", dtype=torch.bfloat16, cache_enabled=False)
        )
        with context:
            x, y = job.data.x_train[:256], job.data.y_train[:256]
            job.learner.train_epoch(x, y, job.optimizer, 64)  # 4 steps
        trained.append(torch.cat([p.detach().flatten() for p in job.learner.parameters()]))
    assert not torch.equal(trained[0], start)
    assert torch.equal(trained[0], trained[1])


def test_validation_is_measured_every_eval_every_passes_and_after_the_last():
    job = digits_job([*QUICK, "trainer.epochs=5", "trainer.eval_every=2"])
    evaluated = {}
    final = experiment.train(job, lambda step, m: evaluated.update({step: "val_accuracy" in m}))
    assert evaluated == {1: False, 2: True, 3: False, 4: True, 5: True}
    assert 0 < final["eval_time_s"] and "test_accuracy" in final


@pytest.mark.parametrize(
    "overrides",
    [
        ["algo=ff", "algo.readout=false"],
        ["algo=ff"],
        ["algo=ff", "algo.loss=cwc", "algo.label_input=none", "algo.negatives=none"],
        ["algo=bp"],
    ],
)
def test_the_timed_matmul_shapes_are_the_counted_flops(overrides):
    """The reference of every "ratio to matmul" times exactly the products the count counts."""
    cfg = compose([*overrides, "model.depth=3", "model.width=30"])
    shapes = train_matmul_shapes(cfg, 64, 10, batch=16)
    assert sum(2 * m * k * n for m, k, n in shapes) == 16 * train_flops_per_example(cfg, 64, 10)


def test_a_run_can_time_its_own_products_as_plain_matmuls():
    job = digits_job([*QUICK, "trainer.matmul_reference=true"])
    final = experiment.train(job, lambda step, metrics: None)
    assert final["matmul_gflops_per_s"] > 0
    ratio = final["train_gflops_per_s"] / final["matmul_gflops_per_s"]
    assert final["matmul_ratio"] == pytest.approx(ratio)


def test_the_matmul_reference_of_a_conv_net_is_refused():
    cfg = compose(["model=conv", "trainer.matmul_reference=true"])
    with pytest.raises(FFBenchError, match="set model=mlp .* or trainer.matmul_reference=false"):
        validate(cfg)


def test_parameter_groups_with_equal_options_become_one():
    """One group per distinct set of options: the biases (never decayed) share the weights'
    group unless the weights are decayed; the read-out has its own learning rate."""
    counts = {}
    for decay in (0.0, 0.01):
        ff, optimizer = make_trainable([*SMALL_FF, f"optimizer.weight_decay={decay}"])
        groups = optimizer.param_groups
        counts[decay] = {(g["lr"], g["weight_decay"]): len(g["params"]) for g in groups}
        assert sum(counts[decay].values()) == len(list(ff.parameters()))
    assert counts[0.0] == {(1e-3, 0.0): 6, (0.01, 0.003): 1, (0.01, 0.0): 1}
    assert counts[0.01] == {(1e-3, 0.01): 3, (1e-3, 0.0): 3, (0.01, 0.003): 1, (0.01, 0.0): 1}
