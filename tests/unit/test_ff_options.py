"""Every FF option does what it says, on hand-made tensors and tiny nets: goodness functions,
losses, activations, negatives, evaluations, peer normalisation, schedules and learning-rate
schedules. That each option learns the digits is in tests/app/test_ff_options.py."""

import math

import pytest
import torch
import torch.nn.functional as F
from helpers import SMALL_FF, make_learner, make_trainable

from ffbench import experiment, ff, ff_data, models
from ffbench.activations import ACTIVATIONS, NORMALISATIONS, tdist
from ffbench.config import compose, validate
from ffbench.errors import FFBenchError
from ffbench.ff_data import (
    embed_neutral,
    hybrid_images,
    hybrid_masks,
    random_wrong_labels,
    sample_wrong_labels,
)
from ffbench.goodness import default_theta, make_goodness, symba_loss, threshold_loss


class Goodness:  # a GoodnessConfig
    def __init__(self, name, inverted=False, feature_fraction=0.5):
        self.name, self.inverted, self.feature_fraction = name, inverted, feature_fraction


A = torch.tensor([[1.0, -2.0, 3.0, 0.5]])


@pytest.mark.parametrize(
    "name, expected",
    [("sumsq", 14.25), ("meansq", 14.25 / 4), ("sumabs", 6.5), ("split", 1 + 4 - 9 - 0.25)],
)
def test_goodness_known_values(name, expected):
    assert make_goodness(Goodness(name), width=4)(A).item() == pytest.approx(expected)


def test_split_goodness_respects_the_feature_fraction():
    g = make_goodness(Goodness("split", feature_fraction=0.75), width=4)
    assert g(A).item() == pytest.approx(1 + 4 + 9 - 0.25)


def test_default_thetas_fit_goodness_and_normalisation():
    """theta asks a unit for the mean square m of each element of the layer's normalised input
    (1 under mean-square normalisation at any size; 1/n for unit length over n elements)."""
    assert default_theta("sumsq", 2000, "mean_square", inputs=784) == 2000
    assert default_theta("meansq", 2000, "mean_square", inputs=784) == 1
    assert default_theta("sumsq", 2000, "unit_length", inputs=500) == 2000 / 500
    assert default_theta("meansq", 2000, "unit_length", inputs=500) == 1 / 500
    assert default_theta("sumabs", 100, "mean_square", inputs=64) == 100
    assert default_theta("sumabs", 100, "unit_length", inputs=64) == 100 / 8  # sqrt(1/64)
    assert default_theta("split", 100, "unit_length", inputs=64) == 0


@pytest.mark.parametrize("norm", ["mean_square", "unit_length"])
def test_a_relu_units_default_theta_is_twice_what_it_gives_at_initialisation(norm):
    """With the reference init, whatever the normalisation's scale: the layer's goodness on
    its first, normalised inputs is half the default theta (within sampling)."""
    torch.manual_seed(0)
    x = NORMALISATIONS[norm](torch.rand(4000, 300))
    layer = torch.nn.Linear(300, 200)
    models.reference_init(layer)
    goodness = torch.relu(layer(x)).pow(2).sum(dim=1).mean().item()
    assert default_theta("sumsq", 200, norm, inputs=300) == pytest.approx(2 * goodness, rel=0.05)


def test_default_thetas_fit_a_bounded_activation():
    """tanh and sigmoid: theta is the goodness their units give at initialisation, E f(z)^2
    (or E|f(z)|) for z ~ N(0, m), m the mean square of the normalised input, checked here by
    sampling."""
    z = torch.randn(2_000_000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for name, f in (("tanh", torch.tanh), ("sigmoid", torch.sigmoid)):
        square, absolute = f(z).pow(2).mean().item(), f(z).abs().mean().item()
        at_25 = f(z / 5).pow(2).mean().item()  # unit length over 25 elements: m = 1/25
        theta = default_theta("sumsq", 100, "mean_square", name, inputs=25)
        assert theta == pytest.approx(100 * square, 1e-2)
        assert default_theta("meansq", 100, "unit_length", name, inputs=25) == pytest.approx(
            at_25, 1e-2
        )
        assert default_theta("sumabs", 100, "mean_square", name, inputs=25) == pytest.approx(
            100 * absolute, 1e-2
        )
    assert default_theta("sumsq", 100, "mean_square", "sigmoid", inputs=9) < 30  # max is 100
    assert default_theta("sumsq", 100, "mean_square", "gelu", inputs=9) == 100  # unbounded


def test_each_layers_theta_takes_the_size_of_its_normalised_input():
    """ff.thresholds: a layer's input is the data (one vector), then the layer below's output
    as passed up (concatenated shortcuts included), or one position's channels
    (model.norm_scope=position)."""
    mlp = ["model.norm=unit_length", "model.width=40", "model.depth=3"]
    assert _thetas(mlp) == pytest.approx([40 / 64, 40 / 40, 40 / 40])
    concat = [*mlp, "model.depth=4", "model.shortcuts=[none,none,concat,none]"]
    assert _thetas(concat) == pytest.approx([40 / 64, 40 / 40, 40 / 40, 40 / 80])
    conv = ["model=conv", "model.channels=[4,6]", "model.norm=unit_length", "model.pool=1"]
    (c0, h0, w0), (c1, h1, w1) = _stack(conv).shapes  # 8 x 8 images
    assert _thetas(conv) == pytest.approx([c0 * h0 * w0 / 64, c1 * h1 * w1 / (c0 * h0 * w0)])
    by_position = [*conv, "model.norm_scope=position", "goodness.spatial=position"]
    assert _thetas(by_position) == pytest.approx([c0 / 64, c1 / c0])


def _stack(overrides: list[str]):
    return experiment.build_learner(compose(overrides), 64, 10, (8, 8), torch.device("cpu")).stack


def _thetas(overrides: list[str]) -> list[float]:
    return ff.thresholds(compose(overrides), _stack(overrides))


def test_losses_known_values():
    s_pos, s_neg = torch.tensor([5.0, 1.0]), torch.tensor([0.0, 4.0])
    expected = (
        F.softplus(torch.tensor([-2.0, 2.0])).sum() + F.softplus(torch.tensor([-3.0, 1.0])).sum()
    ) / 4
    assert threshold_loss(s_pos, s_neg, theta=3.0).item() == pytest.approx(expected.item())
    expected = (math.log1p(math.exp(-4 * 5)) + math.log1p(math.exp(-4 * -3))) / 2
    assert symba_loss(s_pos, s_neg, alpha=4.0, scale=1.0).item() == pytest.approx(expected)


def test_symba_alpha_acts_on_per_unit_goodness_at_every_width():
    """The same per-unit separation gives the same SymBa loss at 16 units and at 2000, and
    the learner hands each layer its goodness's scale (units for sums, 1 for meansq)."""
    s_pos, s_neg = torch.tensor([1.2, 0.9]), torch.tensor([0.8, 1.1])  # per unit
    at = {n: symba_loss(n * s_pos, n * s_neg, alpha=4.0, scale=n).item() for n in (16, 2000)}
    assert at[16] == pytest.approx(at[2000])
    assert at[16] == pytest.approx(symba_loss(s_pos, s_neg, alpha=4.0, scale=1.0).item())
    for goodness, scale in (("sumsq", 16.0), ("meansq", 1.0)):
        net = make_learner([*SMALL_FF, "algo.loss=symba", f"goodness={goodness}"])
        assert [loss.keywords["scale"] for loss in net.losses] == [scale] * 3


def test_inverted_objective_rewards_low_goodness_for_positives():
    """With inverted=true the score is -goodness: a quiet positive and a loud negative give a
    small loss, the opposite a large one."""
    net = make_learner([*SMALL_FF, "goodness.inverted=true"])
    quiet, loud = torch.zeros(1, 4), torch.full((1, 4), 3.0)
    good = net.losses[0](net.score(quiet), net.score(loud))
    bad = net.losses[0](net.score(loud), net.score(quiet))
    assert net.thetas[0] == -16.0 and good < 0.01 < 5 < bad


def test_activations_known_values():
    x = torch.tensor([-2.0, 0.0, 3.0])
    assert ACTIVATIONS["relu"](x).tolist() == [0.0, 0.0, 3.0]
    assert ACTIVATIONS["leaky_relu"](x).tolist() == pytest.approx([-0.02, 0.0, 3.0])
    assert ACTIVATIONS["softplus"](x)[1].item() == pytest.approx(math.log(2))
    assert ACTIVATIONS["sigmoid"](x)[1].item() == 0.5 and ACTIVATIONS["tanh"](x)[1] == 0
    assert ACTIVATIONS["silu"](x)[2].item() == pytest.approx(3 / (1 + math.exp(-3)))
    assert ACTIVATIONS["gelu"](x)[2].item() == pytest.approx(
        3 * 0.5 * (1 + math.erf(3 / math.sqrt(2)))
    )
    # t-distribution: (nu + 1) / 2 * log(1 + x^2 / nu)
    assert tdist(x, nu=2.0).tolist() == pytest.approx([1.5 * math.log(3), 0.0, 1.5 * math.log(5.5)])


def test_fullgrad_relu_passes_the_gradient_where_the_unit_is_off():
    x = torch.tensor([-2.0, 3.0], requires_grad=True)
    y = ACTIVATIONS["relu_fullgrad"](x)
    assert y.tolist() == [0.0, 3.0]
    y.sum().backward()
    assert x.grad.tolist() == [1.0, 1.0]  # plain ReLU would give [0, 1]


def test_hard_negatives_never_carry_the_true_label_and_follow_the_model():
    torch.manual_seed(0)
    for _ in range(50):
        y = torch.randint(0, 10, (256,))
        scores = torch.randn(256, 10) * 5
        assert not (sample_wrong_labels(scores, y) == y).any()
        assert not (random_wrong_labels(y, 10) == y).any()
    # the model strongly believes in label 3: most negatives take it (except for true 3s)
    y = torch.randint(0, 10, (2000,))
    scores = torch.zeros(2000, 10)
    scores[:, 3] = 5.0
    wrong = sample_wrong_labels(scores, y)
    assert (wrong[y != 3] == 3).float().mean() > 0.9
    assert not (wrong[y == 3] == 3).any()


def test_hybrid_masks_are_binary_balanced_and_smooth():
    torch.manual_seed(0)
    masks = hybrid_masks(200, (28, 28), blur_steps=6, device="cpu")
    assert set(masks.unique().tolist()) <= {0.0, 1.0}
    assert 0.35 < masks.mean() < 0.65
    images = masks.view(200, 28, 28)
    agree = (images[:, :, 1:] == images[:, :, :-1]).float().mean()
    raw = (torch.rand(200, 28, 28) < 0.5).float()
    agree_raw = (raw[:, :, 1:] == raw[:, :, :-1]).float().mean()
    assert agree > 0.85 and agree_raw < 0.55  # neighbours agree far more than for raw bits


def test_hybrid_images_take_each_pixel_from_one_of_two_images():
    torch.manual_seed(0)
    x = torch.rand(50, 64)
    mixed = hybrid_images(x, (8, 8), blur_steps=2)
    own, partner = mixed == x, mixed == x.roll(1, 0)
    assert (own | partner).all()
    assert 0.3 < own.float().mean() < 0.7  # both images contribute


def test_readout_sees_no_label_and_sends_no_gradient_into_ff_layers():
    net = make_learner(SMALL_FF)
    x, y = torch.rand(16, 20), torch.randint(0, 10, (16,))
    assert torch.allclose(embed_neutral(x, 10)[:, :10], torch.full((16, 10), 0.1))
    loss = F.cross_entropy(net.readout(net.features(x)), y)
    loss.backward()
    assert net.readout.weight.grad is not None
    assert all(p.grad is None for p in net.stack.parameters())


def test_sequential_schedule_trains_one_layer_at_a_time():
    net, optimizer = make_trainable(SMALL_FF)
    before = [layer.weight.detach().clone() for layer in net.stack.layers]
    net.train_epoch(torch.rand(64, 20), torch.randint(0, 10, (64,)), optimizer, 16, layer=1)
    changed = [
        not torch.equal(b, layer.weight) for b, layer in zip(before, net.stack.layers, strict=True)
    ]
    assert changed == [False, True, False]


def test_linear_decay_schedule():
    """The reference code's: constant for the first half, then (1 + 2 (E - e)) / E, ending
    at 1/E."""
    factors = [experiment.LR_SCHEDULES["linear_decay"](e, 10, 0.0) for e in range(1, 11)]
    assert factors[:5] == [1.0] * 5
    assert factors[5:] == pytest.approx([0.9, 0.7, 0.5, 0.3, 0.1])
    sixty = [experiment.LR_SCHEDULES["linear_decay"](e, 60, 0.0) for e in range(1, 61)]
    assert sixty[:30] == [1.0] * 30 and sixty[30] == pytest.approx(59 / 60)
    assert sixty[-1] == pytest.approx(1 / 60)
    assert experiment.LR_SCHEDULES["constant"](10, 10, 0.0) == 1.0


def test_closed_form_readout_gradient_equals_autograd():
    net = make_learner(SMALL_FF)
    x, y = torch.rand(16, 20), torch.randint(0, 10, (16,))
    features = net.features(x)
    loss = net.readout.set_gradient(features, y)
    closed = (net.readout.weight.grad.clone(), net.readout.bias.grad.clone())
    net.readout.zero_grad()
    expected = F.cross_entropy(net.readout(features), y)
    expected.backward()
    assert loss.item() == pytest.approx(expected.item())
    assert torch.allclose(closed[0], net.readout.weight.grad, atol=1e-6)
    assert torch.allclose(closed[1], net.readout.bias.grad, atol=1e-6)


def test_colour_images_get_the_label_and_the_hybrid_mask_in_every_channel():
    """Rows of 3 channel-first 4x4 planes: positives carry the label in each plane, negatives
    a wrong one, and a hybrid takes the same pixel from the same image in every channel."""
    ff = make_learner(["algo=ff", "model.depth=2", "model.width=16"], 48, image_shape=(4, 4))
    x, y = torch.rand(8, 48), torch.randint(0, 10, (8,))
    pos, neg = ff.negatives(ff, x, y, None)
    for planes, labels in ((pos.view(8, 3, 16), y), (neg.view(8, 3, 16), None)):
        hot = planes[:, :, :10].argmax(dim=2)  # (examples, channels)
        assert (hot == hot[:, :1]).all()  # one label, the same in every channel
        if labels is not None:
            assert (hot[:, 0] == labels).all()
        else:
            assert (hot[:, 0] != y).all()
    assert ff.labels.channels == 3
    real, hybrid = ff_data.hybrid(ff, x, y, None)
    from_first = (hybrid == x).view(8, 3, 16)
    assert (from_first == from_first[:, :1]).all()


def test_label_planes_with_hybrid_negatives_say_what_to_set():
    cfg = compose(["algo.negatives=hybrid", "algo.evaluation=readout", "algo.label_input=planes"])
    with pytest.raises(FFBenchError) as err:
        validate(cfg)
    assert str(err.value) == (
        "algo.negatives=hybrid is unsupervised and writes no label: set algo.label_input=none"
    )
