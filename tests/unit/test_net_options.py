"""The net-and-training ingredients of the best FF methods since 2023 (issue 27), each an
option that combines with the others and, where it is a property of the net, is BP's too:
data augmentation, the cosine schedule's partner AdamW (test_lr_schedule.py), batch norm,
parameter-free shortcuts, grouped layers and per-layer training windows. Each trains on the
bundled digits, FF and BP."""

import pytest
import torch
from helpers import digits_job

from ffbench import experiment
from ffbench.errors import FFBenchError

ONE_THREAD = "trainer.num_threads=1"
CONV = ["model=conv", "model.kernel=3", "model.stride=1", "model.padding=1", ONE_THREAD]
CWC = ["algo=ff", "algo.loss=cwc", "algo.negatives=none", "algo.label_input=none"]
ALGOS = {"ff": CWC, "bp": ["algo=bp"]}


def _trained_inputs(job) -> list[torch.Tensor]:
    """The training rows every pass of `job` hands the learner (it trains as usual)."""
    seen = []
    train_epoch = job.learner.train_epoch

    def recording(x, *args, **kwargs):
        seen.append(x.clone())
        return train_epoch(x, *args, **kwargs)

    job.learner.train_epoch = recording
    experiment.train(job, lambda step, metrics: None)
    return seen


@pytest.mark.parametrize("algo", ALGOS)
def test_augmentation_changes_the_training_images_only_and_follows_the_seed(algo):
    overrides = [*ALGOS[algo], *CONV, "model.depth=2", "model.channels=10", "trainer.epochs=2"]
    augmented = [*overrides, "dataset.augment=crop_flip", "dataset.crop_padding=1"]
    job = digits_job(augmented)
    plain, val, test = job.data.x_train.clone(), job.data.x_val.clone(), job.data.x_test.clone()
    first, second = _trained_inputs(job)
    assert first.shape == plain.shape and not torch.equal(first, plain)
    assert not torch.equal(first, second)  # a fresh variant every pass
    # validation, test and the stored training split stay as they were
    assert torch.equal(job.data.x_train, plain)
    assert torch.equal(job.data.x_val, val) and torch.equal(job.data.x_test, test)
    # every variant is the image shifted by at most one pixel and perhaps flipped: its pixels
    # (the digits' 8x8, with zeros coming in at the border) sum to at most the original's
    assert bool((first.sum(1) <= plain.sum(1) + 1e-5).all())
    again = _trained_inputs(digits_job(augmented))
    assert all(torch.equal(a, b) for a, b in zip(again, [first, second], strict=True))
    other = _trained_inputs(digits_job([*augmented, "trainer.seed=1"]))
    assert not torch.equal(other[0], first)
    assert all(torch.equal(x, plain) for x in _trained_inputs(digits_job(overrides)))


def test_a_flip_mirrors_half_the_images_and_a_crop_shifts_them():
    job = digits_job([*CWC, *CONV, "model.depth=1", "model.channels=10"])
    images = job.data.x_train.view(-1, 1, 8, 8)
    torch.manual_seed(0)
    flipped = experiment.datasets.AUGMENTATIONS["flip"](job.data, 2).view(-1, 1, 8, 8)
    mirrored = (flipped == images.flip(-1)).flatten(1).all(1)
    kept = (flipped == images).flatten(1).all(1)
    assert bool((mirrored | kept).all()) and 0.4 < mirrored.float().mean() < 0.6
    torch.manual_seed(0)
    cropped = experiment.datasets.random_crop(images, 2)
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2))
    shifts = set()
    for index in range(40):  # each crop is its own image at one of the 25 offsets
        found = [
            (top, left)
            for top in range(5)
            for left in range(5)
            if torch.equal(cropped[index], padded[index, :, top : top + 8, left : left + 8])
        ]
        assert found
        shifts.add(found[0])
    assert len(shifts) > 10  # and the offsets vary from image to image


# --- shortcuts, batch norm, grouped layers ---------------------------------------------------

# 8x8 digits through stride-1 3x3 convolutions: every map stays 8x8
RESNET = [*CONV, "model.depth=6", "model.channels=[10,10,10,10,10,20]"]
RESNET += ["model.shortcuts=[none,none,add,none,concat,none]"]


def _inputs_seen(learner, train) -> list[torch.Tensor]:
    """The input each hidden layer's preactivation received while `train()` ran."""
    seen = []
    preactivation = learner.stack.preactivation

    def recording(index, x):
        seen.append((index, x))
        return preactivation(index, x)

    learner.stack.preactivation = recording
    train()
    return seen


@pytest.mark.parametrize("algo", ALGOS)
def test_shortcuts_carry_no_parameters_and_widen_what_they_concatenate(algo):
    job = digits_job([*ALGOS[algo], *RESNET, "trainer.epochs=1"])
    plain = digits_job([*ALGOS[algo], *RESNET[:-1], "trainer.epochs=1"])
    stack, plain_stack = job.learner.stack, plain.learner.stack
    # the concatenation at layer 5 hands layer 6 its 10 channels and layer 3's 10
    assert stack.layers[5].weight.shape == (20, 20, 3, 3)
    assert plain_stack.layers[5].weight.shape == (20, 10, 3, 3)
    assert stack.passed == [(10, 8, 8)] * 4 + [(20, 8, 8), (20, 8, 8)]
    # every other parameter is the plain net's: the shortcuts themselves have none
    shapes = [tuple(p.shape) for name, p in stack.named_parameters() if "layers.5" not in name]
    plain_shapes = [
        tuple(p.shape) for n, p in plain_stack.named_parameters() if "layers.5" not in n
    ]
    assert shapes == plain_shapes
    metrics = experiment.train(job, lambda step, metrics: None)
    assert 0.1 < metrics["test_accuracy"] <= 1.0


def test_ff_passes_no_gradient_along_a_shortcut_and_bp_does():
    x, y = torch.rand(16, 64), torch.randint(0, 10, (16,))
    job = digits_job([*CWC, *RESNET])
    ff, ff_opt = job.learner, job.optimizer
    seen = _inputs_seen(ff, lambda: ff.train_epoch(x, y, ff_opt, 16))
    assert [index for index, _ in seen] == [*range(6), *range(6)]  # read-out's pass, training's
    assert not any(h.requires_grad for _, h in seen)  # every layer's input, shortcut or not
    bp = digits_job(["algo=bp", *RESNET]).learner
    seen = _inputs_seen(bp, lambda: bp.objective(x, y).backward())
    assert all(h.requires_grad for index, h in seen if index > 0)


def test_a_shortcut_pools_its_source_to_the_map_it_joins():
    overrides = [*CWC, "model=conv", "model.kernel=3", "model.stride=2", "model.padding=1"]
    overrides += ["model.depth=4", "model.channels=10", ONE_THREAD]
    job = digits_job([*overrides, "model.shortcuts=[none,none,add,none]"])
    stack = job.learner.stack
    assert [s for s in stack.shapes] == [(10, 4, 4), (10, 2, 2), (10, 1, 1), (10, 1, 1)]
    x = job.data.x_train[:8]
    with torch.no_grad():
        outputs = stack(x)
        source = stack.layer(0, x)  # layer 1's output, 4x4, averaged to layer 3's 1x1
        expected = outputs[2] + source.view(8, 10, 16).mean(dim=2)
        top = stack.layer(3, expected)
    assert torch.allclose(outputs[3], top, atol=1e-6)


def test_misplaced_or_mismatched_shortcuts_say_what_to_set():
    for shortcuts, words in (
        ("[add,none,none,none,none,none]", "set none on the first two layers and the top one"),
        ("[none,none,add]", "is not one of none, add, concat per hidden layer"),
        ("[none,none,skip,none,none,none]", "is not one of none, add, concat per hidden layer"),
    ):
        with pytest.raises(FFBenchError, match=words):
            digits_job([*CWC, *RESNET[:-1], f"model.shortcuts={shortcuts}"])
    with pytest.raises(FFBenchError, match="set model.norm_scope=layer, or add instead"):
        digits_job([*CWC, *RESNET, "model.norm_scope=position"])
    # layer 5 concatenates (20 channels passed up); layer 7 would add those to its own 10
    with pytest.raises(FFBenchError, match="adds the 20 channels that layer 5 passes up"):
        digits_job(
            [*CWC, *CONV, "model.depth=8", "model.channels=10",
             "model.shortcuts=[none,none,none,none,concat,none,add,none]"]
        )  # fmt: skip


@pytest.mark.parametrize("algo", ALGOS)
def test_batch_norm_follows_the_pooling_and_feeds_goodness_and_the_layer_above(algo):
    overrides = [*ALGOS[algo], *CONV, "model.depth=2", "model.channels=[10,20]", "model.pool=2"]
    job = digits_job([*overrides, "model.batch_norm=true", "trainer.epochs=2"])
    stack = job.learner.stack
    assert [bn.num_features for bn in stack.batch_norms] == [10, 20]
    trained = {id(p) for group in job.optimizer.param_groups for p in group["params"]}
    assert all(id(p) in trained for p in stack.batch_norms.parameters())  # they learn too
    x = job.data.x_train[:64]
    stack.train()
    with torch.no_grad():
        outputs = stack(x)
    # in training each channel of each layer's (pooled) output has batch mean 0, variance 1
    for a, (c, h, w) in zip(outputs, stack.shapes, strict=True):
        maps = a.view(64, c, h * w).transpose(0, 1).reshape(c, -1)
        assert torch.allclose(maps.mean(1), torch.zeros(c), atol=1e-4)
        assert torch.allclose(maps.var(1, unbiased=False), torch.ones(c), atol=1e-2)
    metrics = experiment.train(job, lambda step, metrics: None)
    assert 0.1 < metrics["test_accuracy"] <= 1.0
    assert stack.batch_norms[0].num_batches_tracked > 0  # evaluation used running statistics


@pytest.mark.parametrize("algo", ALGOS)
def test_cwcomps_grouped_layers_train_with_batch_norm_and_pooling(algo):
    """CwComp's CFSE net: layers 2 and 4 grouped convolutions, one group per class, pooled."""
    overrides = [*ALGOS[algo], *CONV, "model.depth=4", "model.channels=[10,20,20,40]"]
    overrides += ["model.groups=[1,10,1,10]", "model.batch_norm=true", "trainer.epochs=2"]
    job = digits_job(overrides)
    assert [layer.groups for layer in job.learner.stack.layers] == [1, 10, 1, 10]
    assert job.learner.stack.layers[1].weight.shape == (20, 1, 3, 3)
    metrics = experiment.train(job, lambda step, metrics: None)
    assert 0.1 < metrics["test_accuracy"] <= 1.0


# --- per-layer sizes, mean pooling, dropout ---------------------------------------------------


@pytest.mark.parametrize("algo", ALGOS)
def test_each_layer_takes_its_own_kernel_padding_and_pool(algo):
    """DeeperForward's TinyCNN shape in small: kernels [5,3], paddings [2,1], pooled after
    the first layer only, by the mean (model.pooling=avg)."""
    sizes = ["model.kernel=[5,3]", "model.padding=[2,1]", "model.pool=[2,1]"]
    overrides = [*ALGOS[algo], *CONV, "model.depth=2", "model.channels=[10,20]", *sizes]
    job = digits_job([*overrides, "model.pooling=avg", "trainer.epochs=2"])
    stack = job.learner.stack
    assert [layer.kernel_size for layer in stack.layers] == [(5, 5), (3, 3)]
    assert [layer.padding for layer in stack.layers] == [(2, 2), (1, 1)]
    assert stack.shapes == ((10, 4, 4), (20, 4, 4))  # 8x8 -> conv 8x8 -> pool 4x4 -> conv 4x4
    u = torch.rand(3, 10 * 8 * 8)
    pooled = torch.nn.functional.avg_pool2d(u.view(3, 10, 8, 8), 2).flatten(1)
    assert torch.equal(stack.pooled(0, u), pooled) and torch.equal(stack.pooled(1, u), u)
    metrics = experiment.train(job, lambda step, metrics: None)
    assert 0.1 < metrics["test_accuracy"] <= 1.0


def test_a_list_of_equal_sizes_is_the_same_net_as_the_one_number():
    overrides = [*CWC, *CONV, "model.depth=2", "model.channels=10", "trainer.epochs=1"]
    listed = ["model.pool=[2,2]", "model.kernel=[3,3]", "model.stride=[1,1]", "model.padding=[1,1]"]
    jobs, found = [], []
    for sizes in (["model.pool=2"], listed):  # each built and trained in turn: one RNG stream
        jobs.append(digits_job([*overrides, *sizes]))
        found.append(experiment.train(jobs[-1], lambda step, metrics: None))
    assert found[0]["test_accuracy"] == found[1]["test_accuracy"]
    weights = [job.learner.stack.state_dict() for job in jobs]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_sizes_that_are_not_one_per_layer_say_what_to_set():
    base = [*CWC, *CONV, "model.depth=2", "model.channels=10"]
    for override, words in (
        ("model.kernel=[3]", "model.kernel=\\[3\\] is not one positive count per hidden layer"),
        ("model.padding=[1,-1]", "model.padding must not be negative \\(got \\[1, -1\\]\\)"),
        ("model.stride=[1,x]", "model.stride=\\[1, 'x'\\] is not one positive count"),
        ("model.pool=[1,16]", "model.pool=16 is larger than the 8x8 map of hidden layer 2"),
        ("model.dropout=1.0", "model.dropout=1.0 would zero every activity: set it below 1"),
        ("model.pooling=median", "model.pooling"),
    ):
        with pytest.raises(FFBenchError, match=words):
            digits_job([*base, override])


@pytest.mark.parametrize("algo", ALGOS)
def test_dropout_zeroes_activities_in_training_only(algo):
    overrides = [*ALGOS[algo], *CONV, "model.depth=2", "model.channels=10", "trainer.epochs=2"]
    job = digits_job([*overrides, "model.dropout=0.5"])
    stack, x = job.learner.stack, job.data.x_train[:64]
    with torch.no_grad():
        stack.train()
        trained = stack(x)[0]
        stack.eval()
        evaluated = stack(x)[0]
    kept = trained != 0
    assert 0.4 < 1 - kept.float().mean() / (evaluated != 0).float().mean() < 0.6
    assert torch.allclose(trained[kept], 2 * evaluated[kept])  # the kept scaled by 1/(1-p)
    metrics = experiment.train(job, lambda step, metrics: None)
    assert 0.1 < metrics["test_accuracy"] <= 1.0


# --- per-layer training windows --------------------------------------------------------------


def test_each_layer_trains_in_its_window_only():
    windows = "algo.layer_windows=[[1,1],[1,2],[2,3]]"
    job = digits_job(
        [*CWC, *CONV, "model.depth=3", "model.channels=10", "trainer.epochs=3", windows]
    )
    assert experiment.training_plan(job) == [((0, 1), 1), ((1, 2), 2), ((2,), 3)]
    layers = job.learner.stack.layers
    snapshots = [[layer.weight.detach().clone() for layer in layers]]
    logged = []

    def snapshot(step, metrics):
        snapshots.append([layer.weight.detach().clone() for layer in layers])
        logged.append(sorted(k for k in metrics if k.endswith("_loss") and k.startswith("layer")))

    experiment.train(job, snapshot)
    changed = [
        [not torch.equal(before, after) for before, after in zip(a, b, strict=True)]
        for a, b in zip(snapshots, snapshots[1:], strict=False)
    ]
    assert changed == [[True, True, False], [False, True, True], [False, False, True]]
    assert logged == [
        ["layer0_loss", "layer1_loss"],
        ["layer1_loss", "layer2_loss"],
        ["layer2_loss"],
    ]


def test_windows_that_do_not_fit_say_what_to_set():
    base = [*CWC, *CONV, "model.depth=2", "model.channels=10", "trainer.epochs=3"]
    for windows, words in (
        ("[[1,2]]", "is not one \\[first, last\\] epoch per hidden layer"),
        ("[[1,2],[2,4]]", "within trainer.epochs=3"),
        ("[[1,1],[3,3]]", "leaves epoch 2 without a layer to train"),
    ):
        with pytest.raises(FFBenchError, match=words):
            digits_job([*base, f"algo.layer_windows={windows}"])
    with pytest.raises(FFBenchError, match="set algo.schedule=simultaneous"):
        digits_job([*base, "algo.layer_windows=[[1,3],[1,3]]", "algo.schedule=sequential"])
    # BP has no windows: the key is ignored, and BP trains every layer every epoch
    bp = digits_job(["algo=bp", *base[4:], "algo.layer_windows=[[1,1],[3,3]]"])
    assert experiment.training_plan(bp) == [(None, 1), (None, 2), (None, 3)]


# --- FLOPs: the hand count against torch's FlopCounterMode -----------------------------------

FLOP_NETS = {
    "shortcuts": [*CONV, "trainer.epochs=1", "model.depth=6", "model.channels=[10,10,10,10,10,20]",
                  "model.shortcuts=[none,none,add,none,concat,none]"],
    "mlp_shortcuts": ["model=mlp", "trainer.epochs=1", "model.depth=5", "model.width=20",
                      "model.shortcuts=[none,none,concat,add,none]"],
    "batch_norm": [*CONV, "model.depth=3", "model.channels=[10,20,20]", "model.batch_norm=true",
                   "model.pool=2", "trainer.epochs=1"],
    "windows": [*CONV, "model.depth=3", "model.channels=10", "trainer.epochs=3",
                "algo.layer_windows=[[1,1],[1,2],[2,3]]"],
    "per_layer": [*CONV, "model.depth=3", "model.channels=[10,20,20]", "model.kernel=[5,3,3]",
                  "model.padding=[2,1,0]", "model.pool=[2,1,1]", "model.pooling=avg",
                  "model.dropout=0.2", "trainer.epochs=1"],
}  # fmt: skip


@pytest.mark.parametrize("net", FLOP_NETS)
@pytest.mark.parametrize("algo", ["ff", "ff_labels", "bp"])
def test_the_new_layers_do_the_hand_counted_flops(net, algo):
    from torch.utils.flop_counter import FlopCounterMode

    from ffbench.config import compose
    from ffbench.flops import train_flops_per_example

    learners = {"ff": CWC, "ff_labels": ["algo=ff"], "bp": ["algo=bp"]}
    overrides = [*learners[algo], *FLOP_NETS[net]]
    if algo == "bp" and net == "windows":
        pytest.skip("BP has no windows")
    job = digits_job(overrides)
    batch = 16
    x, y = job.data.x_train[:batch], job.data.y_train[:batch]
    found = []
    for layers, _ in experiment.training_plan(job):
        with FlopCounterMode(display=False) as counter:
            job.learner.train_epoch(x, y, job.optimizer, batch, layers)
        found.append(counter.get_total_flops())
    inputs = job.learner.stack.in_features
    expected = train_flops_per_example(compose(overrides), inputs, 10, (8, 8)) * batch
    assert sum(found) / len(found) == expected


def test_grouped_layers_do_the_hand_counted_flops_forward():
    """Grouped convolutions forward, as FF's goodness evaluation runs them, against
    FlopCounterMode. Training is not compared: torch 2.13's counter counts a grouped
    convolution's backward as if it were not grouped (pytorch/pytorch#183405 fixes it), while
    flops.py counts what the grouped products do, 1/groups of the ungrouped ones."""
    from torch.utils.flop_counter import FlopCounterMode

    from ffbench.config import compose
    from ffbench.flops import goodness_eval_flops_per_example

    overrides = [*CWC, *CONV, "model.depth=3", "model.channels=[10,20,20]"]
    overrides += ["model.groups=[1,10,10]", "model.batch_norm=true", "algo.readout=false"]
    job = digits_job(overrides)
    x = job.data.x_val[:16]
    with FlopCounterMode(display=False) as counter:
        job.learner.predict_all(x)
    per_example = goodness_eval_flops_per_example(compose(overrides), 64, 10, (8, 8))
    assert counter.get_total_flops() == per_example * 16
    ungrouped = goodness_eval_flops_per_example(
        compose([*overrides, "model.groups=1"]), 64, 10, (8, 8)
    )
    assert per_example < ungrouped
