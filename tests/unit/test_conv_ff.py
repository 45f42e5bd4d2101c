"""FF on conv nets: the label inputs' energies (planes, pattern), channel-wise competitive
FF (algo.loss=cwc) on hand-built tensors, pooling and per-layer channels, and the one-line
errors. That each label input learns the digits is in tests/app/test_conv_ff.py."""

import pytest
import torch
import torch.nn.functional as F
from helpers import make_learner, make_trainable

from ffbench.config import compose, validate
from ffbench.errors import FFBenchError
from ffbench.ff import ChannelwiseCompetitive
from ffbench.ff_data import class_patterns
from ffbench.flops import goodness_eval_flops_per_example, train_flops_per_example
from ffbench.models import max_pool

ROWS = {"features": 64, "image_shape": (8, 8)}  # the digits: 8x8 single-channel rows
CWC = ["algo=ff", "algo.loss=cwc", "algo.label_input=none", "algo.negatives=none"]
SMALL_CONV = ["model=conv", "model.kernel=3", "model.stride=1", "model.padding=1"]


def energy(rows: torch.Tensor) -> torch.Tensor:
    return rows.pow(2).sum(dim=1)


@pytest.mark.parametrize("model", ["mlp", "conv", "local"])
def test_label_planes_follow_the_normalised_image_at_its_energy(model):
    """The image is normalised alone (mean square 1: energy = its 48 features), the true
    class's plane carries strength^2 x one image plane's energy (16 pixels), the other planes
    nothing, and the neutral label the same energy spread over all planes. The first layer
    takes these rows as they are: no second normalisation mixes label and image."""
    overrides = ["algo=ff", f"model={model}", "algo.label_input=planes", "model.depth=2"]
    ff = make_learner([*overrides, "algo.label_strength=2.0"], 48, image_shape=(4, 4))
    x, y = 5 * torch.rand(5, 48), torch.tensor([0, 3, 9, 3, 1])  # 3 colour planes of 4x4
    rows = ff.labels.with_label(x, y)
    image, planes = rows[:, :48], rows[:, 48:].view(5, 10, 16)
    assert torch.allclose(energy(image), torch.full((5,), 48.0))
    assert torch.allclose(image, x / x.pow(2).mean(dim=1, keepdim=True).sqrt())
    assert torch.allclose(planes, 2.0 * F.one_hot(y, 10).float()[:, :, None].expand(5, 10, 16))
    assert torch.allclose(energy(rows[:, 48:]), torch.full((5,), 4.0 * 16))
    neutral = ff.labels.neutral(x)
    assert torch.allclose(neutral[:, :48], image)
    assert torch.allclose(energy(neutral[:, 48:]), torch.full((5,), 4.0 * 16))
    assert torch.allclose(neutral[:, 48:], torch.full((5, 160), 2.0 / 10**0.5))
    assert ff.stack.in_features == 48 + 10 * 16
    assert torch.equal(ff.stack.input_norm(rows), rows)


def test_class_patterns_are_distinct_gratings_of_mean_square_one():
    p = class_patterns(10, (28, 28), channels=1)
    assert p.shape == (10, 784)
    assert torch.allclose(p.pow(2).mean(dim=1), torch.ones(10))
    cosine = F.normalize(p, dim=1) @ F.normalize(p, dim=1).T
    assert (cosine - torch.eye(10)).abs().max() < 0.2  # nearly orthogonal: distinct classes
    colour = class_patterns(10, (4, 4), channels=3).view(10, 3, 16)
    assert torch.equal(colour[:, 0], colour[:, 2])  # the same grating in every colour plane


def test_pattern_labels_superimpose_the_class_grating_on_the_normalised_image():
    overrides = ["algo=ff", *SMALL_CONV, "algo.label_input=pattern", "model.depth=2"]
    ff = make_learner(overrides, **ROWS)
    x, y = torch.rand(6, 64), torch.tensor([0, 1, 2, 7, 8, 9])
    image = x / x.pow(2).mean(dim=1, keepdim=True).sqrt()
    rows = ff.labels.with_label(x, y)
    assert rows.shape == (6, 64) and ff.stack.in_features == 64
    assert torch.allclose(rows - image, class_patterns(10, (8, 8), 1)[y], atol=1e-5)
    neutral = ff.labels.neutral(x) - image
    assert torch.allclose(energy(neutral), torch.full((6,), 64.0), rtol=0.2)
    assert torch.equal(ff.stack.input_norm(rows), rows)


def test_class_goodness_and_cwc_loss_known_values():
    """2 classes, 4 channels (2 per class) at 1 position: class k's goodness is the mean
    square of channels 2k and 2k+1; the loss is cross-entropy over goodness / temperature."""
    ff = make_learner(
        [
            *CWC,
            "model=conv",
            "model.kernel=8",
            "model.padding=0",
            "model.channels=4",
            "model.depth=1",
            "algo.temperature=2.0",
        ],
        **ROWS,
        classes=2,
    )
    assert isinstance(ff, ChannelwiseCompetitive)
    a = torch.tensor([[1.0, 3.0, 2.0, 0.0], [0.0, 0.0, 4.0, 2.0]])
    g = ff.goodnesses[0](a)
    assert g.tolist() == [[5.0, 2.0], [0.0, 10.0]]
    y = torch.tensor([0, 0])
    expected = -(torch.log_softmax(torch.tensor([[2.5, 1.0], [0.0, 5.0]]), dim=1)[:, 0]).mean()
    assert ff.losses[0](g, g[:0], y).item() == pytest.approx(expected.item())
    stats = ff.layer_stats(0, g, 2, y)
    assert stats["goodness_pos"].item() == pytest.approx(2.5)  # (5 + 0) / 2
    assert stats["goodness_neg"].item() == pytest.approx(6.0)  # (2 + 10) / 2
    assert stats["separation"].item() == pytest.approx(0.5)  # only the first is right


def test_cwc_groups_channels_with_all_their_positions():
    """Channel-major rows: class k's group is channels k*S..(k+1)*S-1 at every position."""
    ff = make_learner([*CWC, *SMALL_CONV, "model.channels=20", "model.depth=1"], **ROWS)
    a = torch.zeros(1, 20 * 64)
    a[0, 2 * 64 : 4 * 64] = 1.0  # channels 2 and 3: class 1's group, every position
    g = ff.goodnesses[0](a)
    assert g.tolist() == [[0.0, 1.0] + [0.0] * 8]


def test_cwc_sends_no_gradient_across_layers():
    ff, optimizer = make_trainable(
        [*CWC, *SMALL_CONV, "model.channels=20", "model.depth=3"], **ROWS
    )
    x, y = torch.rand(8, 64), torch.randint(0, 10, (8,))
    ff.train_step(x, y, optimizer, range(3))
    h = x
    for k, layer in enumerate(ff.stack.layers):
        a = ff.stack.layer(k, h)
        own = torch.autograd.grad(ff.losses[k](ff.score(a, k), None, y), [layer.weight])[0]
        assert torch.allclose(layer.weight.grad, own, atol=1e-6), k
        h = a.detach()
    # the top layer's loss, through undetached layers, would reach the bottom layer
    through = ff.stack(x)[-1]
    end_to_end = torch.autograd.grad(
        ff.losses[2](ff.score(through, 2), None, y), [ff.stack.layers[0].weight]
    )
    assert end_to_end[0].abs().sum() > 0 and not torch.allclose(
        end_to_end[0], ff.stack.layers[0].weight.grad
    )


def test_cwc_predicts_in_one_pass_by_the_goodness_summed_over_the_evaluated_layers():
    ff = make_learner([*CWC, *SMALL_CONV, "model.channels=20", "model.depth=3"], **ROWS)
    x = torch.rand(7, 64)
    activities = ff.stack(x)
    total = ff.goodnesses[1](activities[1]) + ff.goodnesses[2](activities[2])  # layer 0 skipped
    assert torch.allclose(ff.label_goodness(x), total)
    assert torch.equal(ff.predict_all(x)["goodness"], total.argmax(dim=1))
    assert goodness_eval_flops_per_example(ff_cfg(SMALL_CONV), 64, 10, (8, 8)) * 1 == (
        goodness_eval_flops_per_example(ff_cfg([*CWC, *SMALL_CONV]), 64, 10, (8, 8)) * 10
    )


def ff_cfg(overrides):
    cfg = compose(["algo=ff", *overrides])
    validate(cfg)
    return cfg


def test_cwc_trains_an_mlp_too_and_learns_a_separable_task():
    ff, optimizer = make_trainable([*CWC, "model.width=40", "model.depth=2"], features=20)
    torch.manual_seed(1)
    centres = 3 * torch.randn(10, 20)
    y = torch.randint(0, 10, (500,))
    x = centres[y] + torch.randn(500, 20)
    for _ in range(30):
        ff.train_epoch(x, y, optimizer, batch_size=50)
    assert (ff.predict_all(x)["goodness"] == y).float().mean() > 0.9


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["algo.loss=cwc", "algo.negatives=none"],
            "algo.loss=cwc reads the class from each layer's channel groups, not from the "
            "input: set algo.label_input=none",
        ),
        (
            ["algo.loss=cwc", "algo.label_input=none"],
            "algo.loss=cwc with algo.negatives=random_label: only the cwc loss trains without "
            "negative data: set algo.negatives=none",
        ),
        (
            ["algo.negatives=none"],
            "algo.loss=threshold with algo.negatives=none: only the cwc loss trains without "
            "negative data: set algo.loss=cwc (or other negatives)",
        ),
        (
            ["algo.label_input=none"],
            "algo.negatives=random_label writes a wrong label into the input, which "
            "algo.label_input=none leaves out: choose a label input (pixels, planes, pattern), "
            "or algo.loss=cwc algo.negatives=none",
        ),
        (
            ["algo.negatives=hybrid", "algo.evaluation=readout", "algo.label_input=planes"],
            "algo.negatives=hybrid is unsupervised and writes no label: set algo.label_input=none",
        ),
        (
            ["model=conv", "model.channels=[8,16]", "model.depth=3"],
            "model.channels=[8, 16] is not one positive count per hidden layer: set "
            "model.channels to a number, or to a list of model.depth=3 numbers",
        ),
    ],
)
def test_label_input_negatives_and_loss_mismatches_say_what_to_set(overrides, message):
    with pytest.raises(FFBenchError) as err:
        validate(compose(["algo=ff", *overrides]))
    assert str(err.value) == message


def test_cwc_refuses_channels_that_do_not_split_into_the_classes():
    with pytest.raises(FFBenchError) as err:
        make_learner([*CWC, *SMALL_CONV, "model.channels=[20,25]", "model.depth=2"], **ROWS)
    assert str(err.value) == (
        "algo.loss=cwc splits each layer into one group per class, but hidden layer 2 has 25 "
        "channels or units for 10 classes: set model.channels to a multiple of 10"
    )
    with pytest.raises(FFBenchError, match="set model.width to a multiple of 10"):
        make_learner([*CWC, "model.width=32"])


def test_pooling_and_per_layer_channels_shape_the_stack_and_the_flop_count():
    """3x3 convolutions keeping the 8x8 map, 2x2 max-pooling after each: 8x8 -> 4x4 -> 2x2,
    channels 10 then 20; BP's head and FF's read-out see the pooled outputs."""
    overrides = [*SMALL_CONV, "model.channels=[10,20]", "model.depth=2", "model.pool=2"]
    ff = make_learner(["algo=ff", *overrides], **ROWS)
    assert ff.stack.shapes == ((10, 4, 4), (20, 2, 2))
    assert ff.stack.out_features == [160, 80]
    assert ff.readout.in_features == 80  # the top layer only (the first is not evaluated)
    x = torch.rand(3, 64)
    z = ff.stack.preactivation(0, x).view(3, 10, 8, 8)
    expected = F.max_pool2d(ff.stack.activation(z), 2).flatten(1)
    assert torch.allclose(ff.stack.layer(0, x), expected)
    bp = make_learner(["algo=bp", *overrides], **ROWS)
    assert bp.net(torch.rand(3, 64)).shape == (3, 10) and bp.net.head.in_features == 80
    # MACs count the convolution at full resolution: 64 x 9 x 1 x 10, then 16 x 9 x 10 x 20
    macs = 64 * 9 * 10 + 16 * 9 * 10 * 20
    readout = 2 * macs + 4 * 80 * 10
    assert train_flops_per_example(ff_cfg(overrides), 64, 10, (8, 8)) == 8 * macs + readout
    assert train_flops_per_example(ff_cfg([*CWC, *overrides]), 64, 10, (8, 8)) == 4 * macs + readout


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape, k", [((4, 20, 28, 28), 2), ((3, 24, 7, 7), 2), ((2, 5, 9, 9), 3)])
def test_max_pooling_channels_last_is_torchs_bit_for_bit(shape, k, dtype):
    """model.pooling=max pools channels-last on the CPU (models.max_pool, 3-4x faster there):
    the output and the input's gradient are F.max_pool2d's exactly, with the ties that ReLU's
    zeros make (the first of a window wins in both) and maps that do not divide by k."""
    a = torch.randn(shape).relu().to(dtype).requires_grad_()
    grad = torch.randn(shape[0], shape[1], shape[2] // k, shape[3] // k).to(dtype)
    ours, torchs = max_pool(a, k), F.max_pool2d(a, k)
    assert ours.is_contiguous() and torch.equal(ours, torchs)
    assert torch.equal(*(torch.autograd.grad(out, a, grad)[0] for out in (ours, torchs)))


def test_a_pooling_window_larger_than_a_map_says_what_to_set():
    with pytest.raises(FFBenchError) as err:
        make_learner(["algo=ff", *SMALL_CONV, "model.depth=3", "model.pool=3"], **ROWS)
    assert str(err.value) == (
        "model.pool=3 is larger than the 2x2 map of hidden layer 2: set a smaller model.pool "
        "or model.depth"
    )


def test_grouped_convolutions_keep_each_class_group_to_its_own_channels():
    """model.groups=[1,10]: layer 2's class group k sees only layer 1's group k, so a change
    in one group's input channels moves one group's output alone; the MACs shrink 10-fold."""
    overrides = [*SMALL_CONV, "model.channels=[20,40]", "model.depth=2", "model.groups=[1,10]"]
    ff = make_learner([*CWC, *overrides], **ROWS)
    conv = ff.stack.layers[1]
    assert conv.groups == 10 and conv.weight.shape == (40, 2, 3, 3)
    h = torch.rand(1, 20 * 64)
    bumped = h.clone().view(1, 20, 64)
    bumped[0, 4:6] += 1.0  # channels 4 and 5: group 2
    changed = (conv(bumped.view(1, -1)) - conv(h)).view(40, 64).abs().sum(dim=1) > 0
    assert changed.tolist() == [8 <= c < 12 for c in range(40)]  # group 2 of 4 outputs each
    macs = 64 * 9 * 1 * 20 + 64 * 9 * 2 * 40
    readout = 2 * macs + 4 * 40 * 64 * 10
    assert train_flops_per_example(ff_cfg([*CWC, *overrides]), 64, 10, (8, 8)) == 4 * macs + readout
    with pytest.raises(FFBenchError) as err:
        make_learner(
            [
                "algo=ff",
                *SMALL_CONV,
                "model.channels=[20,30]",
                "model.depth=2",
                "model.groups=[1,4]",
            ],
            **ROWS,
        )
    assert str(err.value) == (
        "model.groups: hidden layer 2 has 20 input and 30 output channels, not both divisible "
        "into 4 groups: set its groups to a common divisor (1: an ordinary convolution)"
    )


def test_standard_normalisation_centres_each_vector_at_mean_square_one():
    ff = make_learner(["algo=ff", "model.norm=standard", "model.width=16"])
    a = torch.rand(4, 16) + 3.0
    out = ff.stack.normalise(0, a)
    assert torch.allclose(out.mean(dim=1), torch.zeros(4), atol=1e-6)
    assert torch.allclose(out.pow(2).mean(dim=1), torch.ones(4), atol=1e-5)


def test_pooling_or_groups_on_an_mlp_say_what_to_set():
    for key in ("model.pool", "model.groups"):
        with pytest.raises(FFBenchError) as err:
            validate(compose([f"{key}=2"]))
        assert str(err.value) == f"{key} acts on spatial layers: set model=conv, or {key}=1"
