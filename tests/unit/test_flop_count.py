"""ffbench/flops.py's hand counts checked against a maintained counter: torch's own
FlopCounterMode counts the FLOPs of one real training step of every built-in model (mlp, conv,
local) under FF and BP, and they must equal train_flops_per_example x the batch.

Why equal, and not "within x%": FlopCounterMode counts the matrix products and convolutions
alone (mm, addmm, bmm, convolution and their backward products, at 2 FLOPs per multiply-add;
an addmm's bias addition is not counted), and leaves out every element-wise op, norm,
reduction and the optimizer's update. flops.py counts exactly that class of work (its
docstring: "only the matrix products count"), so the two agree to the FLOP wherever the hand
count is right. The tolerance is therefore 0: a product the hand count misses, or counts
twice, fails here. bp_ckpt is left out on purpose: its recomputed forward pass is overhead,
which flops.py does not count as useful work (FlopCounterMode does)."""

import pytest
import torch
from helpers import make_trainable
from torch.utils.flop_counter import FlopCounterMode

from ffbench.config import compose
from ffbench.flops import goodness_eval_flops_per_example, train_flops_per_example

BATCH = 16
DIGITS = {"features": 64, "image_shape": (8, 8)}  # 8x8 single-channel rows, like the digits
# small nets that use every part of a layer: padding and stride on the spatial ones
MODELS = {
    "mlp": ["model=mlp", "model.depth=3", "model.width=24"],
    "conv": ["model=conv", "model.depth=2", "model.channels=4", "model.kernel=3",
             "model.stride=1", "model.padding=1"],
    "local": ["model=local", "model.depth=2", "model.channels=3", "model.kernel=3",
              "model.stride=2", "model.padding=0"],
}  # fmt: skip
ALGOS = {
    "ff": ["algo=ff"],
    "ff_no_readout": ["algo=ff", "algo.readout=false"],
    "ff_sequential": ["algo=ff", "algo.schedule=sequential"],
    "ff_hard_negatives": ["algo=ff", "algo.negatives=hard_label"],
    "bp": ["algo=bp"],
}


def counted(overrides: list[str], layer: int | None = None) -> int:
    """The FLOPs FlopCounterMode counts in one training step on a batch of BATCH rows
    (training layer `layer` only, the FF sequential schedule's pass, or every layer)."""
    learner, optimizer = make_trainable(overrides, **DIGITS)
    x, y = torch.rand(BATCH, DIGITS["features"]), torch.randint(0, 10, (BATCH,))
    with FlopCounterMode(display=False) as counter:
        learner.train_epoch(x, y, optimizer, BATCH, layer)
    return counter.get_total_flops()


@pytest.mark.parametrize("algo", ALGOS)
@pytest.mark.parametrize("model", MODELS)
def test_a_training_step_does_the_hand_counted_flops(model, algo):
    overrides = [*ALGOS[algo], *MODELS[model]]
    cfg = compose(overrides)
    learner, _ = make_trainable(overrides, **DIGITS)
    inputs = learner.stack.in_features  # the data's, plus FF's label input if any
    expected = train_flops_per_example(cfg, inputs, 10, DIGITS["image_shape"]) * BATCH
    stages = learner.stages()  # [None], or one pass per layer (sequential)
    found = sum(counted(overrides, layer) for layer in stages) / len(stages)
    assert found == expected


@pytest.mark.parametrize("model", MODELS)
def test_a_goodness_evaluation_does_the_hand_counted_flops(model):
    overrides = ["algo=ff", "algo.readout=false", *MODELS[model]]
    learner, _ = make_trainable(overrides, **DIGITS)
    x = torch.rand(BATCH, DIGITS["features"])
    with FlopCounterMode(display=False) as counter:
        learner.predict_all(x)
    inputs = learner.stack.in_features
    cfg = compose(overrides)
    per_example = goodness_eval_flops_per_example(cfg, inputs, 10, DIGITS["image_shape"])
    assert counter.get_total_flops() == per_example * BATCH
