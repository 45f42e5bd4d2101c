"""Your net, your data, through the installed command: a package of the user's own in a folder
on PYTHONPATH (written here), its conv blocks and its Dataset named by `_target_`, FF and BP
trained on them in one sweep, and what MLflow records of them: the user's targets and their
arguments as params, the FLOPs FlopCounterMode counted, memory as for built-in nets, the data
set as a dataset input with its digest. A mistake in the user's code is one line, a non-zero
exit and no run left RUNNING."""

import textwrap

import pytest
from helpers import all_runs, clean_env, make_trainable, run_ffbench

NETS = """
    from torch import nn

    def blocks(channels=4):
        # 8x8 images: 8x8 maps, then 4x4, then 16 units
        return [
            nn.Conv2d(1, channels, 3, padding=1),
            nn.Sequential(nn.MaxPool2d(2), nn.Conv2d(channels, channels, 3, padding=1)),
            nn.Sequential(nn.Flatten(), nn.Linear(channels * 16, 16)),
        ]

    def broken():
        return [nn.Conv2d(1, 4, 3), nn.Conv2d(3, 4, 3)]
"""
DATA = """
    import torch

    class Stripes(torch.utils.data.Dataset):
        # an 8x8 image per example: a bright row at 2 x its class (of 4)
        classes = ["0", "2", "4", "6"]

        def __init__(self, n=120, seed=0, shift=0):
            g = torch.Generator().manual_seed(seed)
            self.labels = torch.randint(0, 4, (n,), generator=g) + shift
            self.images = torch.rand(n, 1, 8, 8, generator=g) * 0.3
            for image, label in zip(self.images, self.labels):
                image[0, 2 * (label % 4)] += 0.7

        def __len__(self):
            return len(self.labels)

        def __getitem__(self, i):
            return self.images[i], int(self.labels[i])
"""
NET = ["model=user", "model.blocks={_target_: tinylab.nets.blocks, channels: 4}"]
TRAIN = "dataset.train={_target_: tinylab.data.Stripes, n: 120}"
MINE = [
    *NET,
    "dataset=user",
    TRAIN,
    "dataset.test={_target_: tinylab.data.Stripes, n: 40, seed: 1}",
    "dataset.val_size=20",
    "trainer.epochs=2",
    "trainer.batch_size=20",
    "trainer.num_threads=1",
]


@pytest.fixture
def tinylab(tmp_path, monkeypatch):
    """The user's package, in a folder of its own; (that folder, the command's environment).
    Named apart from docs/extending.md's `mylab`, which a unit test imports in-process."""
    package = tmp_path / "code" / "tinylab"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "nets.py").write_text(textwrap.dedent(NETS))
    (package / "data.py").write_text(textwrap.dedent(DATA))
    monkeypatch.syspath_prepend(str(tmp_path / "code"))  # for the expected figures, here
    return package, clean_env(PYTHONPATH=str(tmp_path / "code"))


def _expected(algo: str) -> tuple[int, float]:
    """(parameters, useful FLOPs per training example) of the learner the run built."""
    from ffbench.config import compose
    from ffbench.flops import train_flops_per_example

    overrides = [*NET, f"algo={algo}"]
    learner, _ = make_trainable(overrides, features=64, image_shape=(8, 8), classes=4)
    stack = learner.stack
    flops = train_flops_per_example(compose(overrides), stack.in_features, 4, (8, 8), stack)
    return sum(p.numel() for p in learner.parameters()), flops


def test_ff_and_bp_train_the_users_net_on_the_users_data(workdir, tinylab):
    package, env = tinylab
    result = run_ffbench(workdir, "-m", "algo=ff,bp", *MINE, env=env)
    assert result.returncode == 0, result.stderr
    jobs = [r for r in all_runs(workdir) if "ffbench.job_num" in r.data.tags]
    assert sorted(r.data.params["algo.name"] for r in jobs) == ["bp", "ff"]
    digests = set()
    for run in jobs:
        p, m = run.data.params, run.data.metrics
        assert run.info.status == "FINISHED"
        assert p["model.name"] == "user" and p["model.blocks._target_"] == "tinylab.nets.blocks"
        assert p["model.blocks.channels"] == "4"
        assert p["dataset.train._target_"] == "tinylab.data.Stripes"
        assert p["dataset.test.seed"] == "1"
        parameters, flops = _expected(p["algo.name"])
        assert m["param_mb"] == pytest.approx(parameters * 4 / 2**20)  # float32, as built
        assert m["peak_saved_activations_mb"] > 0 and m["peak_rss_mb"] > 0
        examples = 2 * 100  # 2 epochs of the 120 training examples less 20 for validation
        counted = m["train_gflops_per_s"] * 1e9 * m["train_time_s"] / examples
        assert counted == pytest.approx(flops, rel=1e-9)
        inputs = {i.tags[0].value: i.dataset for i in run.inputs.dataset_inputs}
        assert sorted(inputs) == ["test", "training", "validation"]
        assert {d.name for d in inputs.values()} == {"tinylab.data.Stripes"}
        assert str(package / "data.py") in inputs["training"].source
        digests.add(inputs["training"].digest)
    assert len(digests) == 1 and "" not in digests  # the same data for FF and BP, digested


@pytest.mark.parametrize(
    "mistake, line",
    [
        (
            ["model.blocks={_target_: tinylab.nets.broken}", TRAIN],
            "model.blocks: block 2 (Conv2d) cannot take the output of block 1 (Conv2d), of "
            "shape (4, 6, 6) per example",
        ),
        (
            [*NET[1:], "dataset.train={_target_: tinylab.data.Stripes, shift: 1}"],
            "dataset.train: labels run from 1 to 4, outside the 4 classes 0..3: number the "
            "classes from 0, or set dataset.num_classes=5",
        ),
        (
            [*NET[1:], "dataset.train={_target_: tinylab.data.Stripess}"],
            "dataset.train: _target_ tinylab.data.Stripess cannot be imported",
        ),
    ],
    ids=["blocks that do not chain", "labels outside the classes", "no such target"],
)
def test_a_mistake_in_the_users_code_is_one_line_and_leaves_no_run(workdir, tinylab, mistake, line):
    command = ["model=user", "dataset=user", *mistake, "dataset.test_size=20"]
    result = run_ffbench(workdir, *command, "dataset.val_size=20", env=tinylab[1])
    assert result.returncode == 1
    [message] = result.stderr.strip().splitlines()
    assert message.startswith(f"ffbench: error: {line}")
    assert not [r for r in all_runs(workdir) if r.info.status == "RUNNING"]
