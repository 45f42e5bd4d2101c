"""model=user: a researcher's own blocks, by `_target_` (ffbench/user.py), trained by FF and BP
as the built-in layers are. User blocks that are the built-in MLP's layers train to the same
weights bit for bit, under FF's options and BP alike; FlopCounterMode's count of a block equals
flops.py's hand count of every built-in layer, and a training step of a user conv net does the
FLOPs the run records; what users get wrong is one line naming the block."""

import textwrap

import pytest
import torch
from helpers import SMALL_FF, digits_job, make_trainable, train_on_digits

from ffbench import experiment, user
from ffbench.config import compose
from ffbench.errors import FFBenchError
from ffbench.flops import model_layers, train_flops_per_example
from ffbench.settings import settings_hash

# SMALL_FF's MLP (3 x 16 on the 8x8 digits) as user blocks: the first flattens the images
FLAT = "{_target_: torch.nn.Flatten}"
MLP_BLOCKS = (
    "model.blocks=["
    f"{{_target_: torch.nn.Sequential, _args_: [{FLAT}, "
    "{_target_: torch.nn.Linear, in_features: 64, out_features: 16}]}, "
    "{_target_: torch.nn.Linear, in_features: 16, out_features: 16}, "
    "{_target_: torch.nn.Linear, in_features: 16, out_features: 16}]"
)
QUICK = ["trainer.epochs=2", "trainer.num_threads=1"]


@pytest.mark.parametrize(
    "options",
    [
        ["algo=ff"],
        ["algo=ff", "algo.peer_norm=0.03", "algo.negatives=hard_label"],
        ["algo=ff", "algo.schedule=sequential", "algo.step_each_layer=true"],
        ["algo=ff", "model.blackbox=sign", "model.blackbox_after=2"],
        ["algo=ff", "algo.layer_windows=[[1,1],[1,2],[2,2]]"],
        ["algo=bp"],
        ["algo=bp_ckpt", "optimizer=sgd", "optimizer.lr=0.05"],
    ],
    ids=lambda o: " ".join(o),
)
def test_user_blocks_train_exactly_as_the_built_in_layers_they_are(options):
    """The same layers built from the same random draws: every metric of every epoch equal."""
    built_in = train_on_digits([*QUICK, *SMALL_FF, *options])
    mine = train_on_digits([*QUICK, *SMALL_FF, *options, "model=user", MLP_BLOCKS])
    for run in (built_in, mine):
        for metrics in (run, *run["history"]):
            for timing in [k for k in metrics if k.endswith(("_time_s", "_per_s"))]:
                del metrics[timing]
    assert mine == built_in


def _linear_blocks(*sizes: int) -> str:
    """model.blocks of Linear layers (in, out) for the digits, the first after a Flatten."""
    blocks = [
        f"{{_target_: torch.nn.Linear, in_features: {a}, out_features: {b}}}" for a, b in sizes
    ]
    blocks[0] = f"{{_target_: torch.nn.Sequential, _args_: [{FLAT}, {blocks[0]}]}}"
    return f"model.blocks=[{', '.join(blocks)}]"


@pytest.mark.parametrize("algo", ["ff", "bp"])
@pytest.mark.parametrize(
    "shortcuts, sizes",
    [
        ("[none,none,add,none,none]", [(64, 16), (16, 16), (16, 16), (16, 16), (16, 16)]),
        ("[none,none,concat,none,none]", [(64, 16), (16, 16), (16, 16), (32, 16), (16, 16)]),
    ],
    ids=["add", "concat"],
)
def test_the_stacks_shortcuts_and_batch_norm_apply_to_user_blocks(algo, shortcuts, sizes):
    """model.shortcuts and model.batch_norm, options of the shared stack, on user blocks: the
    same training as the built-in MLP with them (a concatenation widens the input of the
    block above, which takes it)."""
    options = [*QUICK, f"algo={algo}", f"model.shortcuts={shortcuts}", "model.batch_norm=true"]
    built_in = train_on_digits([*options, "model=mlp", "model.depth=5", "model.width=16"])
    mine = train_on_digits([*options, "model=user", _linear_blocks(*sizes)])
    for run in (built_in, mine):
        for metrics in (run, *run["history"]):
            for timing in [k for k in metrics if k.endswith(("_time_s", "_per_s"))]:
                del metrics[timing]
    assert mine == built_in


def _user_module(tmp_path, monkeypatch, source: str) -> None:
    (tmp_path / "mynet.py").write_text(textwrap.dedent(source))
    monkeypatch.syspath_prepend(str(tmp_path))


CONV_NET = """
    from torch import nn

    def blocks(channels=4, hidden=20):
        return [
            nn.Conv2d(1, channels, 3, padding=1),
            nn.Sequential(nn.MaxPool2d(2), nn.Conv2d(channels, channels, 3, stride=1)),
            nn.Sequential(nn.Flatten(), nn.Linear(channels * 2 * 2, hidden)),
        ]

    def with_a_shortcut():  # under model.shortcuts=[none,none,concat,none]: 8 channels in
        return [
            nn.Conv2d(1, 4, 3, padding=1),
            nn.Conv2d(4, 4, 3, padding=1),
            nn.Conv2d(4, 4, 3, padding=1),
            nn.Sequential(nn.Flatten(), nn.Linear(8 * 64, 20)),
        ]

    def deep_blocks():  # two products in a block: its backward runs through both
        return [
            nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1)),
            nn.Sequential(nn.Flatten(), nn.Linear(256, 32), nn.Tanh(), nn.Linear(32, 20)),
        ]

    def grouped():  # 2 groups of 4 channels
        return [nn.Conv2d(1, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1, groups=2)]

    def chain_broken():
        return [nn.Conv2d(1, 4, 3), nn.Conv2d(5, 4, 3)]

    def not_a_module():
        return [nn.Conv2d(1, 4, 3), "relu"]
"""
BATCH = 16


def _plain(*macs: int) -> list[tuple[int, int, int]]:
    """The FLOPs per example of one-product blocks: 2 x MACs forward, and as many for the
    weights' gradient and for the input's."""
    return [(2 * m, 2 * m, 2 * m) for m in macs]


NETS = {  # model.blocks and the stack's options; forward, weights' and input's gradient FLOPs
    "conv": (["model.blocks={_target_: mynet.blocks}"], _plain(4 * 64 * 9, 4 * 4 * 4 * 9, 16 * 20)),
    "concat shortcut": (
        [
            "model.blocks={_target_: mynet.with_a_shortcut}",
            "model.shortcuts=[none,none,concat,none]",
        ],
        _plain(4 * 64 * 9, 4 * 4 * 64 * 9, 4 * 4 * 64 * 9, 8 * 64 * 20),
    ),
    "grouped": (["model.blocks={_target_: mynet.grouped}"], _plain(8 * 64 * 9, 8 * 64 * 9 * 4)),
    # the inner product's input gradient is part of the weights' backward of a deep block
    "deep blocks": (
        ["model.blocks={_target_: mynet.deep_blocks}"],
        [
            (2 * (36 + 144) * 64, 2 * (36 + 2 * 144) * 64, 2 * 36 * 64),
            (2 * (256 * 32 + 32 * 20), 2 * (256 * 32 + 2 * 32 * 20), 2 * 256 * 32),
        ],
    ),
}


@pytest.mark.parametrize("net", NETS)
@pytest.mark.parametrize(
    "algo", [["algo=ff"], ["algo=ff", "algo.readout=false"], ["algo=bp"]], ids=" ".join
)
def test_a_user_conv_net_does_the_flops_the_run_records(tmp_path, monkeypatch, algo, net):
    """FlopCounterMode on one real training step equals what final_metrics counts: each
    block's measured forward, weights' and input's gradient FLOPs through flops.py's formulas
    (the same class of work: products and convolutions; a concatenation's wider input counts
    in the block above). user.flop_counter is torch's, grouped convolutions' weight gradients
    counted once (torch 2.13 counts them once per group)."""
    _user_module(tmp_path, monkeypatch, CONV_NET)
    overrides = [*algo, "model=user", *NETS[net][0]]
    learner, optimizer = make_trainable(overrides, features=64, image_shape=(8, 8))
    assert learner.stack.measured == NETS[net][1]
    x, y = torch.rand(BATCH, 64), torch.randint(0, 10, (BATCH,))
    with user.flop_counter() as counter:
        learner.train_epoch(x, y, optimizer, BATCH)
    cfg = compose(overrides)
    inputs = learner.stack.in_features
    expected = train_flops_per_example(cfg, inputs, 10, (8, 8), learner.stack) * BATCH
    assert counter.get_total_flops() == expected


BUILT_IN = {
    "mlp": ["model=mlp", "model.depth=3", "model.width=24"],
    "conv": ["model=conv", "model.depth=2", "model.channels=4", "model.kernel=3",
             "model.stride=1", "model.padding=1"],
    "conv_grouped": ["model=conv", "model.depth=2", "model.channels=[4,6]", "model.groups=[1,2]",
                     "model.kernel=3", "model.stride=2", "model.padding=1"],
    "local": ["model=local", "model.depth=2", "model.channels=3", "model.kernel=3",
              "model.stride=2", "model.padding=0"],
}  # fmt: skip


@pytest.mark.parametrize("model", BUILT_IN)
def test_the_block_counter_agrees_with_the_hand_counts_of_every_built_in_layer(model):
    """user.probe (FlopCounterMode), which counts every user block, on each built-in layer:
    2 x the MACs flops.py counts by hand, forward, to the weights and to the input."""
    overrides = ["algo=bp", *BUILT_IN[model]]
    stack = make_trainable(overrides, features=64, image_shape=(8, 8))[0].stack
    ins = [stack.in_features, *stack.out_features[:-1]]
    counted = [user.probe(layer, (n,))[1] for layer, n in zip(stack.layers, ins, strict=True)]
    assert counted == _plain(*model_layers(compose(overrides), 64, (8, 8))[0])


def _error(overrides, tmp_path, monkeypatch) -> str:
    _user_module(tmp_path, monkeypatch, CONV_NET)
    with pytest.raises(FFBenchError) as err:
        make_trainable(["model=user", *overrides], features=64, image_shape=(8, 8))
    assert "\n" not in str(err.value)
    return str(err.value)


def test_what_users_get_wrong_in_their_blocks_is_one_line_naming_it(tmp_path, monkeypatch):
    assert _error(["model.blocks={_target_: mynets.blocks}"], tmp_path, monkeypatch) == (
        "model.blocks: _target_ mynets.blocks cannot be imported (ModuleNotFoundError: No "
        "module named 'mynets'): put the folder holding its package on PYTHONPATH, or "
        "correct the name"
    )
    assert _error(["model.blocks={_target_: mynet.not_a_module}"], tmp_path, monkeypatch) == (
        "model.blocks: block 2 is a str, not a torch.nn.Module: make each block an nn.Module "
        "(one hidden layer)"
    )
    broken = _error(["model.blocks={_target_: mynet.chain_broken}"], tmp_path, monkeypatch)
    assert broken.startswith(
        "model.blocks: block 2 (Conv2d) cannot take the output of block 1 (Conv2d), of shape "
        "(4, 6, 6) per example (RuntimeError: "
    )
    assert broken.endswith("make the input of block 2 fit the output of block 1")
    first = _error(
        ["model.blocks=[{_target_: torch.nn.Linear, in_features: 64, out_features: 8}]"],
        tmp_path,
        monkeypatch,
    )
    assert "block 1 (Linear) cannot take the data, of shape (1, 8, 8)" in first
    assert first.endswith("(a fully connected block on images: nn.Flatten() first)")
    assert _error(["model.blocks=[{_target_: torch.nn.ReLU}]"], tmp_path, monkeypatch) == (
        "model.blocks: block 1 (ReLU) has no parameters to train: make each block a layer with "
        "weights (a parameter-free module goes inside one)"
    )
    with pytest.raises(FFBenchError, match=r"^algo.layer_windows=\[\[1, 2\], \[1, 2\]\] is not"):
        # one window per block (3), whatever model.depth (2) says: checked as the job is built
        digits_job(
            [
                "model=user",
                "model.blocks={_target_: mynet.blocks}",
                "algo.layer_windows=[[1,2],[1,2]]",
            ]
        )
    typo = _error(["model.blocks={_target_: mynet.blocks, chanels: 3}"], tmp_path, monkeypatch)
    assert typo.startswith("model.blocks: mynet.blocks raised TypeError: ")
    assert "chanels" in typo
    assert _error(
        ["model.blocks={_target_: mynet.blocks}", "model.blackbox=sign", "model.blackbox_after=3"],
        tmp_path,
        monkeypatch,
    ) == (
        "model.blackbox_after=3 is not between two of the 3 hidden layers: set "
        "model.blackbox_after between 1 and 2"
    )


def test_a_class_group_loss_names_the_block_whose_channels_do_not_split(tmp_path, monkeypatch):
    cwc = ["algo.loss=cwc", "algo.negatives=none", "algo.label_input=none"]
    message = _error([*cwc, "model.blocks={_target_: mynet.blocks}"], tmp_path, monkeypatch)
    assert message == (
        "algo.loss=cwc splits each layer into one group per class, but block 1 (Conv2d) of "
        "model.blocks has 4 channels or units for 10 classes: set its output channels (or "
        "units) to a multiple of 10"
    )


def test_the_settings_hash_covers_the_blocks_and_their_arguments():
    base = ["model=user", "model.blocks={_target_: mynet.blocks, channels: 4}"]

    def hashed(*overrides):
        return settings_hash(compose([*base, *overrides]), "cpu")

    assert hashed() != hashed("model.blocks={_target_: mynet.blocks, channels: 8}")
    assert hashed() != hashed("model.blocks={_target_: theirnet.blocks, channels: 4}")
    projection = ["algo.loss=cwc", "algo.label_input=none", "algo.negatives=none"]
    projection.append("algo.class_goodness=projection")  # pools user blocks' maps into patches
    assert hashed(*projection) != hashed(*projection, "algo.patches=[2,2,1]")
    # keys the user's blocks never read (their sizes are the blocks')
    for unread in ("model.depth=5", "model.width=7", "model.kernel=3", "model.channels=9"):
        assert hashed() == hashed(unread), unread


CONV_BN = (
    "model.blocks=[{_target_: torch.nn.Sequential, _args_: ["
    "{_target_: torch.nn.Conv2d, in_channels: 1, out_channels: 4, kernel_size: 3, padding: 1}, "
    "{_target_: torch.nn.BatchNorm2d, num_features: 4}]}, "
    f"{{_target_: torch.nn.Sequential, _args_: [{FLAT}, "
    "{_target_: torch.nn.Linear, in_features: 256, out_features: 16}]}]"
)


@pytest.mark.parametrize("algo", ["algo=ff", "algo=bp"])
def test_a_user_net_continued_from_its_checkpoint_equals_one_trained_straight(tmp_path, algo):
    """Blocks with buffers of their own (batch norm's running statistics): a job stopped after
    2 of 3 passes and continued in a fresh job from its checkpoint ends as one never stopped."""
    overrides = ["model=user", CONV_BN, "trainer.epochs=3", "trainer.num_threads=1", algo]
    straight = []
    experiment.train(digits_job(overrides), lambda step, metrics: straight.append(metrics))
    path, stopped = tmp_path / "checkpoint.pt", []

    def stop_after_two(step, metrics):
        stopped.append(metrics)
        if step == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        experiment.train(digits_job(overrides), stop_after_two, checkpoint=path)
    second = digits_job(overrides)
    start = experiment.load_checkpoint(path, second)
    rest = []
    experiment.train(second, lambda step, metrics: rest.append(metrics), start=start)

    def numbers(history):
        return [{k: v for k, v in m.items() if not k.endswith("_time_s")} for m in history]

    assert numbers(stopped + rest) == numbers(straight)
    running_mean = second.learner.stack.layers[0].block[1].running_mean
    assert not torch.equal(running_mean, torch.zeros(4))  # the statistics moved, and were kept


def test_class_goodness_from_patches_of_user_blocks_maps(tmp_path, monkeypatch):
    """algo.class_goodness=projection pools each block's (C, H, W) output into patches; a
    block of units is a 1x1 map, one patch."""
    projection = [
        "model.blocks={_target_: mynet.blocks}",
        "algo.loss=cwc",
        "algo.label_input=none",
        "algo.negatives=none",
        "algo.class_goodness=projection",
    ]
    assert _error(projection, tmp_path, monkeypatch) == (
        "algo.patches=2 asks for 2x2 patches of the 1x1 map of hidden layer 3: set at most 1 "
        "for that layer (a list gives each layer its own)"
    )
    learner, optimizer = make_trainable(
        ["model=user", *projection, "algo.patches=[2,2,1]"], features=64, image_shape=(8, 8)
    )
    x, y = torch.rand(BATCH, 64), torch.randint(0, 10, (BATCH,))
    assert learner.train_epoch(x, y, optimizer, BATCH)["train_loss"] > 0
    assert [p.shape for n, p in learner.named_buffers() if n.startswith("projection")] == [
        (4 * 4, 10), (4 * 4, 10), (20, 10)
    ]  # fmt: skip
