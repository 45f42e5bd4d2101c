"""Spatial models (model=conv, model=local), per-position goodness and the black box, on tiny
nets: FF stays layer-local, the FLOP count is the hand count, and bad sizes or an impossible BP
are refused with one line. That they learn the digits, and the command line's answers, are in
tests/app/test_spatial.py."""

import pytest
import torch
import torch.nn.functional as F
from helpers import CPU, make_learner, make_trainable

from ffbench.activations import NORMALISATIONS
from ffbench.analytic import saved_activation_bytes
from ffbench.config import compose, validate
from ffbench.errors import FFBenchError
from ffbench.ff import per_position_goodness
from ffbench.ff_data import embed_labels
from ffbench.flops import goodness_eval_flops_per_example, train_flops_per_example
from ffbench.goodness import GOODNESS
from ffbench.measure import PeakMemory
from ffbench.models import BLACKBOXES, per_position

ROWS = {"features": 64, "image_shape": (8, 8)}  # the digits: 8x8 single-channel rows
SMALL = ["model.channels=8", "model.kernel=3", "model.stride=1", "model.padding=1", "model.depth=3"]


@pytest.mark.parametrize("model", ["conv", "local"])
def test_no_gradient_crosses_layers_in_ff(model):
    """Each layer's gradient after a training step is the gradient of its own loss alone, on
    its detached input; the same losses through the whole graph would give another one."""
    ff, optimizer = make_trainable(["algo=ff", f"model={model}", *SMALL], **ROWS)
    x, y = torch.rand(8, 64), torch.randint(0, 10, (8,))
    pos = embed_labels(x, y, 10, 1.0)
    neg = embed_labels(x, (y + 3) % 10, 10, 1.0)
    ff.negatives = lambda learner, x, y, features: (pos, neg)
    ff.train_step(x, y, optimizer, range(3))
    layers = ff.stack.layers
    h, through = torch.cat([pos, neg]), torch.cat([pos, neg])
    total = 0
    for k, layer in enumerate(layers):
        a = ff.stack.layer(k, h)
        s = ff.score(a, k)
        own = torch.autograd.grad(ff.losses[k](s[:8], s[8:]), [layer.weight])[0]
        assert torch.allclose(layer.weight.grad, own, atol=1e-6), k
        h = a.detach()
        through = ff.stack.layer(k, through)  # no detach: a gradient could flow down
        s = ff.score(through, k)
        total = total + ff.losses[k](s[:8], s[8:])
    end_to_end = torch.autograd.grad(total, [layers[0].weight])[0]
    assert not torch.allclose(end_to_end, layers[0].weight.grad, atol=1e-6)


def test_per_position_goodness_and_normalisation_on_a_hand_built_tensor():
    # one example, 2 channels x 2 positions, channel-major: channel 0 = (1, 2), channel 1 = (3, 0)
    a = torch.tensor([[1.0, 2.0, 3.0, 0.0]])
    g = per_position_goodness(GOODNESS["sumsq"], channels=2)(a)
    assert g.tolist() == [[1 + 9, 4 + 0]]
    normed = per_position(NORMALISATIONS["mean_square"], channels=2)(a).view(2, 2)
    assert torch.allclose(normed.pow(2).mean(dim=0), torch.ones(2))  # each position's channels
    assert torch.allclose(normed[:, 1], torch.tensor([2.0, 0.0]) / 2**0.5)
    # in an FF net: theta per position = channels; the loss is averaged over positions
    ff = make_learner(
        ["algo=ff", "model=conv", "goodness.spatial=position", "model.norm_scope=position"], **ROWS
    )
    assert ff.thetas == [32.0, 32.0]
    s_pos, s_neg = torch.tensor([[40.0, 30.0]]), torch.tensor([[20.0, 35.0]])
    expected = F.softplus(torch.tensor([-8.0, 2.0, -12.0, 3.0])).mean()
    assert torch.allclose(ff.losses[0](s_pos, s_neg), expected)
    whole = make_learner(["algo=ff", "model=conv"], **ROWS)
    assert whole.thetas == [32.0 * 4 * 4, 32.0 * 2 * 2]  # sumsq: the layer's units


@pytest.mark.parametrize("spatial", ["whole", "position"])
def test_batched_label_goodness_matches_the_naive_loop_for_conv(spatial):
    ff = make_learner(
        [
            "algo=ff",
            "model=conv",
            *SMALL,
            f"goodness.spatial={spatial}",
            "model.norm_scope=position",
        ],
        **ROWS,
    )
    x = torch.rand(5, 64)
    batched = ff.label_goodness(x)
    for label in range(10):
        activities = ff.stack(embed_labels(x, torch.full((5,), label), 10, 1.0))
        naive = sum(a.pow(2).sum(dim=1) for a in activities[1:])  # sumsq, summed over positions
        assert torch.allclose(batched[:, label], naive, rtol=1e-5)
    assert torch.equal(ff.predict_all(x)["goodness"], batched.argmax(1))


@pytest.mark.parametrize("model", ["conv", "local"])
def test_flops_of_a_small_spatial_net_equal_a_hand_count(model):
    # 8x8 input, 4 channels, kernel 3, no padding: 6x6x4 then 4x4x4
    sizes = ["model.channels=4", "model.kernel=3", "model.stride=1", "model.padding=0"]
    macs = [6 * 6 * 9 * 1 * 4, 4 * 4 * 9 * 4 * 4]  # positions x kernel area x C_in x C_out
    total, top = sum(macs), 4 * 4 * 4
    expected = {
        ("ff", "false"): 8 * total,
        ("ff", "true"): 8 * total + 2 * total + 4 * top * 10,  # read-out on the top layer
        ("bp", "true"): 2 * total + 2 * macs[1] + 2 * total + 6 * top * 10,
    }
    for (algo, readout), flops in expected.items():
        cfg = compose([f"model={model}", f"algo={algo}", f"algo.readout={readout}", *sizes])
        assert train_flops_per_example(cfg, 64, 10, (8, 8)) == flops
    assert goodness_eval_flops_per_example(cfg, 64, 10, (8, 8)) == 10 * 2 * total
    with pytest.raises(ValueError, match="image shape"):
        train_flops_per_example(cfg, 64, 10)
    # the layers really do that many multiply-adds: the weights' sizes x positions
    stack = make_learner([f"model={model}", "algo=bp", *sizes], **ROWS).stack
    if model == "local":
        assert [layer.weight.numel() for layer in stack.layers] == macs


def test_locally_connected_layer_equals_a_convolution_with_the_same_filters_everywhere():
    ff = make_learner(["algo=ff", "model=local", *SMALL], **ROWS)
    layer = ff.stack.layers[1]
    conv = torch.nn.Conv2d(8, 8, 3, 1, 1)
    with torch.no_grad():  # copy the conv's filters into every position
        layer.weight.copy_(conv.weight.flatten(1).T.expand_as(layer.weight))
        layer.bias.copy_(conv.bias[:, None].expand_as(layer.bias))
    x = torch.rand(4, 8 * 64)
    assert torch.allclose(layer(x), conv(x.view(4, 8, 8, 8)).flatten(1), atol=1e-5)


def test_checkpointed_bp_on_a_local_net_computes_the_same_gradients():
    x, y = torch.rand(6, 64), torch.randint(0, 10, (6,))
    grads = []
    for algo in ("bp", "bp_ckpt"):
        bp = make_learner([f"algo={algo}", "model=local", *SMALL], **ROWS)
        F.cross_entropy(bp.net(x), y).backward()
        grads.append(torch.cat([p.grad.flatten() for p in bp.parameters()]))
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


@pytest.mark.parametrize("kind", ["sign", "quantize", "numpy"])
def test_the_black_box_has_no_gradient_unless_straight_through(kind):
    box = make_learner(
        ["algo=ff", f"model.blackbox={kind}", "model.width=16"], **ROWS
    ).stack.blackbox
    x = torch.randn(4, 16, requires_grad=True)
    assert not box(x).requires_grad  # autograd cannot see through it
    assert not torch.equal(box(x), x)
    box.straight_through = True
    out = box(x)
    out.sum().backward()
    assert torch.allclose(out, BLACKBOXES[kind](box, x.detach())) and torch.equal(
        x.grad, torch.ones(4, 16)
    )


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["algo=bp", "model.blackbox=numpy"], "set model.blackbox_grad=straight_through"),
        (["model.blackbox=sign", "model.blackbox_after=2"], "set model.blackbox_after between 1"),
        (["goodness.spatial=position"], "set model=conv or model=local"),
        (["model=local", "goodness.spatial=position"], "set model.norm_scope=position"),
        (["model=conv", "model.kernel=0"], "model.kernel must be positive"),
    ],
)
def test_impossible_settings_are_refused_before_training(overrides, message):
    with pytest.raises(FFBenchError, match=message):
        validate(compose(overrides))


def test_a_kernel_larger_than_a_layer_input_says_what_to_set():
    with pytest.raises(
        FFBenchError, match=r"model.kernel=5 is larger than the 4x4 input of hidden layer 2"
    ):
        make_learner(
            ["model=conv", "model.depth=3", "model.padding=0", "model.stride=1", "model.kernel=5"],
            **ROWS,
        )
    with pytest.raises(FFBenchError, match="set model=mlp"):
        make_learner(["model=conv"], 64)


def test_analytic_memory_covers_ff_through_a_black_box_and_refuses_the_rest():
    ff, optimizer = make_trainable(
        ["algo=ff", "model.blackbox=sign", "model.width=16"], 20, image_shape=(4, 5)
    )
    x, y = torch.rand(8, 20), torch.randint(0, 10, (8,))
    with PeakMemory(CPU, ff.parameters()) as memory:
        ff.train_epoch(x, y, optimizer, 8)
    assert memory.saved.peak_bytes == saved_activation_bytes("ff", 8, 16, 2, 20, blackbox="sign")
    with pytest.raises(ValueError, match="model=mlp only"):
        saved_activation_bytes("ff", 8, 16, 2, 64, model="conv")
    with pytest.raises(ValueError, match="black box"):
        saved_activation_bytes("bp", 8, 16, 2, 64, blackbox="sign")
