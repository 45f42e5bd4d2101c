"""FF as Hinton's reference code trains it (the Matlab code he published with the paper: its
details that are easy to get wrong): peer normalisation at the units' input, the
initialisation, the weight cost and the learning-rate decay, each checked against the
reference's formula on a tiny net."""

import pytest
import torch
from helpers import SMALL_FF, digits_job, make_trainable

from ffbench import experiment
from ffbench.ff import PeerNorm

PEER = [*SMALL_FF, "algo.peer_norm=0.03"]
HOT = ["optimizer.lr=0.003", "trainer.epochs=10"]  # Adam at 3x its default: units die


def test_peer_normalisation_gradient_is_the_reference_term_at_the_units_input():
    """d(term)/dz_ij = 0.03 * (m_j - mean(m)) / N, m the running mean activity after this
    batch (started at 0.5), checked by autograd and by finite differences."""
    peer = PeerNorm([4], coefficient=0.03)
    z = torch.randn(8, 4, dtype=torch.float64, requires_grad=True)
    a = torch.relu(z).detach()
    peer.surrogate(0, z, a).backward()
    m = 0.9 * 0.5 + 0.1 * a.float().mean(dim=0)
    expected = (0.03 * (m - m.mean()) / 8).double().expand(8, 4)
    assert torch.allclose(z.grad, expected, atol=1e-9)
    assert torch.allclose(peer.mean0, m)

    def term(z: torch.Tensor) -> float:  # from the same starting means every time
        peer.mean0.fill_(PeerNorm.START)
        return peer.surrogate(0, z, a).item()

    eps = 0.1  # the term is linear in z: a large step loses nothing, float32 rounding less
    for i, j in ((0, 0), (3, 2), (7, 3)):
        up, down = z.detach().clone(), z.detach().clone()
        up[i, j] += eps
        down[i, j] -= eps
        slope = (term(up) - term(down)) / (2 * eps)
        assert slope == pytest.approx(expected[i, j].item(), rel=1e-4)


def test_peer_normalisation_revives_a_unit_the_relu_switched_off():
    """A unit whose input is always negative gets no gradient from FF's loss through the ReLU;
    peer normalisation still pushes its input up (bias gradient -0.03 (mean(m) - m_j))."""
    for overrides, revived in ((SMALL_FF, False), (PEER, True)):
        ff, optimizer = make_trainable(overrides)
        first = ff.stack.layers[0]
        with torch.no_grad():
            first.weight[0] = 0.0
            first.bias[0] = -10.0  # unit 0 is off for every input
        ff.train_step(torch.rand(32, 20), torch.randint(0, 10, (32,)), optimizer, range(3))
        if not revived:
            assert first.bias.grad is None or first.bias.grad[0] == 0
            continue
        m = ff.peer.mean0
        assert m[0] == pytest.approx(0.45)  # 0.9 * 0.5 + 0.1 * 0: the unit was off
        assert first.bias.grad[0].item() == pytest.approx(0.03 * (m[0] - m.mean()).item())
        assert first.bias.grad[0] < 0  # gradient descent raises the unit's input


def dead_units(job) -> int:
    """Hidden units that no training example (with its true label) switches on."""
    ff, x, y = job.learner, job.data.x_train, job.data.y_train
    with torch.no_grad():
        activities = ff.stack(ff.labels.with_label(x, y))
    return sum(int((a.amax(dim=0) <= 0).sum()) for a in activities)


def test_peer_normalisation_leaves_no_unit_dead_on_the_digits():
    """Trained on the digits at a high rate, units die without peer normalisation (no
    training example switches them on) and none do with it."""
    dead = {}
    for peer in (0.0, 0.03):
        job = digits_job([*HOT, f"algo.peer_norm={peer}"])
        experiment.train(job, lambda step, metrics: None)
        dead[peer] = dead_units(job)
    assert dead[0.0] > 0 and dead[0.03] == 0, dead


@pytest.mark.parametrize("algo", ["ff", "bp"])
def test_reference_initialisation(algo):
    """N(0, 1/fan-in) weights and zero biases for FF's and BP's layers (and BP's output
    layer); FF's read-out starts at zero. model.init=torch keeps torch's own."""
    learner, _ = make_trainable([f"algo={algo}", "model.width=400"], features=900)
    first = learner.stack.layers[0]
    assert first.weight.std().item() == pytest.approx(900**-0.5, rel=0.02)
    assert first.weight.mean().abs() < 1e-3
    assert all((layer.bias == 0).all() for layer in learner.stack.layers)
    if algo == "bp":
        assert learner.net.head.weight.std().item() == pytest.approx(400**-0.5, rel=0.1)
        assert (learner.net.head.bias == 0).all()
    else:
        assert (learner.readout.weight == 0).all() and (learner.readout.bias == 0).all()
    torch_default, _ = make_trainable([f"algo={algo}", "model.init=torch"], features=900)
    layer = torch_default.stack.layers[0]
    assert layer.weight.std().item() == pytest.approx((3 * 900) ** -0.5, rel=0.05)
    assert (layer.bias != 0).any()


@pytest.mark.parametrize("algo", ["ff", "bp"])
def test_weight_cost_on_weights_only_and_the_readouts_own(algo):
    """One SGD step with zero gradients moves only what the weight cost decays: every weight
    by lr * wc * w (wc 0.001; FF's read-out 0.003 at its own rate), never a bias."""
    overrides = [
        f"algo={algo}",
        "optimizer=sgd",
        "optimizer.momentum=0",
        "optimizer.weight_decay=0.001",
    ]
    learner, optimizer = make_trainable([*overrides, "model.init=torch"])
    before = {name: p.detach().clone() for name, p in learner.named_parameters()}
    for p in learner.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    for name, p in learner.named_parameters():
        if name.endswith("bias"):
            assert torch.equal(p, before[name]), name
            continue
        lr, wc = (0.01, 0.001)  # conf/optimizer/sgd.yaml's lr
        if name.startswith("readout"):
            lr, wc = (0.01, 0.003)  # algo.readout_lr, algo.readout_weight_decay
        assert torch.allclose(p, before[name] * (1 - lr * wc)), name
