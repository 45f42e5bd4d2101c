"""The FF objectives of DeeperForward, ASGE and CwComp as options (issue 27), and every FF
layer's own accuracy: mean goodness as the logit, class-group normalisation between layers,
patch goodness through a fixed random projection, the softmax predictor and the layer range
chosen on validation. Each on hand-made tensors and trained on the bundled digits."""

import pytest
import torch
import torch.nn.functional as F
from helpers import digits_job, make_learner, make_trainable, train_on_digits

from ffbench import compare, experiment, records
from ffbench.errors import FFBenchError
from ffbench.ff import best_range
from ffbench.goodness import GOODNESS

ROWS = {"features": 64, "image_shape": (8, 8)}  # the digits: 8x8 single-channel rows
CWC = ["algo=ff", "algo.loss=cwc", "algo.label_input=none", "algo.negatives=none"]
CONV = ["model=conv", "model.kernel=3", "model.stride=1", "model.padding=1"]
# a small conv net of class groups on the digits, trained by every test here
DIGITS = [
    *CWC,
    *CONV,
    "model.channels=[20,20,20]",
    "model.depth=3",
    "model.pool=1",
    "algo.readout=false",
    "trainer.epochs=3",
    "trainer.batch_size=64",
    "model.norm=standard",
    "optimizer.lr=0.01",
]


def test_mean_goodness_of_each_class_group_is_the_cross_entropy_logit_itself():
    """goodness=mean, temperature 1: class k's logit is the mean activity of its channels over
    every position, and the loss is plain cross-entropy over those means."""
    assert GOODNESS["mean"](torch.tensor([[1.0, -2.0, 3.0, 0.5]])).item() == 0.625
    ff = make_learner(
        [*CWC, "model=conv", "model.kernel=8", "model.padding=0", "model.channels=4"]
        + ["model.depth=1", "goodness=mean"],
        **ROWS,
        classes=2,
    )
    a = torch.tensor([[1.0, 3.0, 2.0, 0.0], [0.0, 0.0, 4.0, 2.0]])  # 4 channels, 1 position
    g = ff.goodnesses[0](a)
    assert g.tolist() == [[2.0, 1.0], [0.0, 3.0]]
    y = torch.tensor([0, 1])
    assert ff.losses[0](g, g[:0], y).item() == pytest.approx(F.cross_entropy(g, y).item())


def test_class_group_normalisation_hides_each_layers_class_goodness_from_the_next():
    """model.norm=class_groups: what a layer passes on has, in each class's channel group
    (all its positions), mean 0 and mean square 1, so the mean goodness of every group the
    next layer could read is 0. The data are normalised as one vector (standard)."""
    for algo in (CWC, ["algo=bp"]):  # a property of the net: BP's twin has it too
        learner = make_learner(
            [*algo, *CONV, "model.channels=20", "model.norm=class_groups"], **ROWS
        )
        stack = learner.stack
        a = torch.rand(5, 20 * 64) * torch.arange(1, 21).repeat_interleave(64)  # groups differ
        passed = stack.norms[0](a).view(5, 10, 2 * 64)
        assert torch.allclose(passed.mean(dim=2), torch.zeros(5, 10), atol=1e-5)
        assert torch.allclose(passed.pow(2).mean(dim=2), torch.ones(5, 10), atol=1e-4)
        x = torch.rand(5, 64) + 2
        data = stack.input_norm(x)
        assert torch.allclose(data.mean(dim=1), torch.zeros(5), atol=1e-5)
    with pytest.raises(FFBenchError) as err:
        make_learner(["algo=bp", "model.width=32", "model.norm=class_groups"])
    assert str(err.value) == (
        "model.norm=class_groups splits each layer into one group per class, but hidden layer 1 "
        "has 32 channels or units for 10 classes: set model.width to a multiple of 10"
    )


PROJECTION = ["algo.class_goodness=projection", "algo.patches=[4,2,1]"]


def test_patch_goodness_goes_through_a_fixed_random_projection():
    """ASGE: each channel's mean square over each of P x P patches (adaptive average pooling),
    times a N(0, 1/classes) matrix that is a buffer: saved with the learner, never a parameter."""
    ff = make_learner([*DIGITS, *PROJECTION, "model.channels=[6,8,5]"], **ROWS)  # any counts
    shapes = [(6, 4), (8, 2), (5, 1)]  # channels, patches per side
    for index, (channels, p) in enumerate(shapes):
        projection = getattr(ff, f"projection{index}")
        assert projection.shape == (channels * p * p, 10)
        assert f"projection{index}" in ff.state_dict()
    assert not any(name.startswith("projection") for name, _ in ff.named_parameters())
    entries = torch.cat([getattr(ff, f"projection{i}").flatten() for i in range(3)])
    assert entries.std().item() == pytest.approx(10**-0.5, rel=0.15)  # N(0, 1/classes)
    a = torch.rand(3, 8 * 64)  # layer 1's output: 8 channels of 8x8
    patches = F.adaptive_avg_pool2d(a.view(3, 8, 8, 8).pow(2), 2).flatten(1)
    assert torch.allclose(ff.goodnesses[1](a), patches @ ff.projection1)
    # a 7x7 map pooled to 3x3 patches (overlapping windows) works too: adaptive pooling
    with pytest.raises(FFBenchError) as err:
        make_learner([*DIGITS, *PROJECTION, "algo.patches=9"], **ROWS)
    assert str(err.value) == (
        "algo.patches=9 asks for 9x9 patches of the 8x8 map of hidden layer 1: set at most 8 "
        "for that layer (a list gives each layer its own)"
    )
    with pytest.raises(FFBenchError, match="goodness=split is not a sum over units: choose"):
        make_learner([*DIGITS, *PROJECTION, "goodness=split"], **ROWS)


def test_the_projection_never_changes_while_the_layers_learn():
    job = digits_job([*DIGITS, *PROJECTION, "trainer.num_threads=1"])
    before = {k: v.clone() for k, v in job.learner.state_dict().items()}
    trained = {id(p) for group in job.optimizer.param_groups for p in group["params"]}
    assert not any(id(getattr(job.learner, f"projection{i}")) in trained for i in range(3))
    result = experiment.train(job, lambda step, metrics: None)
    after = job.learner.state_dict()
    for index in range(3):
        assert torch.equal(after[f"projection{index}"], before[f"projection{index}"])
    assert not torch.equal(after["stack.layers.0.weight"], before["stack.layers.0.weight"])
    assert result["test_accuracy"] > 0.8  # measured 0.97 (chance 0.1)


def test_every_layer_predicts_alone_after_every_epoch():
    """val_accuracy_layer{i} after every epoch, test_accuracy_layer{i} at the end: layer i's
    prediction is the class with its own largest goodness."""
    result = train_on_digits([*DIGITS, "trainer.num_threads=1"])
    for metrics in result["history"]:
        assert {f"val_accuracy_layer{i}" for i in range(3)} <= set(metrics)
    assert {f"test_accuracy_layer{i}" for i in range(3)} <= set(result)
    assert result["test_accuracy_layer2"] > 0.8  # measured 0.93 (chance 0.1)
    ff = make_learner(DIGITS, **ROWS)
    x = torch.rand(7, 64)
    activities = ff.stack(x)
    predictions = ff.predict_all(x)
    for i in range(3):
        assert torch.equal(predictions[f"layer{i}"], ff.goodnesses[i](activities[i]).argmax(1))


def test_the_best_range_is_contiguous_and_longest_of_equals():
    y = torch.tensor([0, 1, 1])
    right, wrong = torch.tensor([[2.0, 0.0], [0.0, 2.0], [0.0, 2.0]]), torch.zeros(3, 2)
    wrong[:, 0] = 5.0  # says class 0 loudly
    assert best_range(torch.stack([wrong, right, right, wrong]), y) == (1, 2)
    assert best_range(torch.stack([right, right, right]), y) == (0, 2)  # all equal: the longest
    assert best_range(torch.stack([wrong, wrong, right]), y) == (2, 2)


def test_the_layer_range_is_chosen_on_validation_and_predicts_by_it():
    """algo.predictor=layer_range: after every evaluation the range of layers whose summed
    class goodness predicts the validation split best, logged; never the test split."""
    job = digits_job([*DIGITS, "algo.predictor=layer_range", "trainer.num_threads=1"])
    seen, history = [], []
    choose = job.learner.choose

    def watched(x, y):
        seen.append(x)
        return choose(x, y)

    job.learner.choose = watched
    experiment.train(job, lambda step, metrics: history.append(metrics))
    assert len(seen) == 3 and all(x is job.data.x_val for x in seen)
    scores = job.learner.layer_scores(job.data.x_val)
    first, last = best_range(scores, job.data.y_val)
    assert (history[-1]["layer_range_first"], history[-1]["layer_range_last"]) == (first, last)
    assert job.learner.layer_range.tolist() == [first, last]
    assert "layer_range" in job.learner.state_dict()  # a checkpoint or a logged model keeps it
    x = job.data.x_test[:50]
    expected = job.learner.layer_scores(x)[first : last + 1].sum(dim=0).argmax(1)
    assert torch.equal(job.learner.predict_all(x)["goodness"], expected)


def test_the_softmax_predictor_learns_on_the_top_layers_class_scores():
    ff, optimizer = make_trainable([*DIGITS, "algo.predictor=softmax"], **ROWS)
    assert ff.head.weight.shape == (10, 10) and not ff.head.weight.any()  # reference init: 0
    assert any(p is ff.head.weight for group in optimizer.param_groups for p in group["params"])
    x, y = torch.rand(64, 64), torch.randint(0, 10, (64,))
    metrics = ff.train_epoch(x, y, optimizer, 32)
    assert metrics["head_loss"] > 0 and ff.head.weight.any()
    top = ff.layer_scores(x)[-1]
    assert torch.equal(ff.predict_all(x)["goodness"], ff.head(top).argmax(1))
    with pytest.raises(FFBenchError) as err:
        make_learner(["algo=ff", "algo.predictor=softmax"])
    assert str(err.value) == (
        "algo.predictor=softmax learns from the top layer's class scores in training, which "
        "algo.loss=threshold does not compute: set a competitive loss (cwc)"
    )


def _run(seed: int, layers: list[float], kept: tuple | None, algo: str = "ff"):
    metrics = {"test_accuracy": layers[-1] if layers else 0.9, "val_accuracy": 0.9}
    metrics |= {f"test_accuracy_layer{i}": value for i, value in enumerate(layers)}
    if kept is not None:
        metrics |= {"layer_range_first": kept[0], "layer_range_last": kept[1]}
    return records.as_run(
        {
            "run_id": f"{algo}{seed}",
            "status": "FINISHED",
            "start_time": 0,
            "end_time": 1,
            "run_name": "r",
            "metrics": metrics,
            "history": {},
            "params": {"algo": algo, "trainer.seed": str(seed)},
            "tags": {"ffbench.overrides": f"algo={algo} trainer.seed={seed}"},
        }
    )


def test_the_report_gives_each_layers_accuracy_and_the_range_kept():
    """One row per setting: each layer's test accuracy (mean ± sd over seeds) and the layer
    range kept, with its count where seeds kept different ones; BP has no such row."""
    runs = [
        _run(1, [0.2, 0.9, 0.8], (1, 2)),
        _run(2, [0.4, 0.9, 0.9], (1, 2)),
        _run(3, [0.3, 0.9, 1.0], (0, 2)),
        _run(1, [], None, algo="bp"),
    ]
    headers, rows = compare.layer_rows(runs, [])
    assert headers == ["setting", "runs", "layer 0", "layer 1", "layer 2", "range kept"]
    assert rows == [
        [
            "algo=ff",
            "3",
            "0.3000 ± 0.1000",
            "0.9000 ± 0.0000",
            "0.9000 ± 0.1000",
            "1-2 (2), 0-2 (1)",
        ]
    ]
    assert compare.kept(runs[:2]) == "1-2" and compare.kept(runs[3:]) == ""
    section = compare.markdown(runs, [], "t", "here")
    assert "| `algo=ff` | 3 | 0.3000 ± 0.1000 |" in section
