"""Which settings count as the same job for the duplicate check of sweeps (the settings hash):
what the job ignores does not count, as each key declares in the schema. The sweeps themselves
are in tests/app/test_skip_finished.py."""

import copy
import typing

import pytest
from omegaconf import OmegaConf

from ffbench.config import allowed, compose, schema_keys, validate
from ffbench.settings import ignored, settings_hash


def _hash(*overrides: str, device: str = "cpu") -> str:
    return settings_hash(compose(overrides), device)


def test_settings_hash_ignores_what_the_algorithm_ignores():
    bp = _hash("algo=bp")
    for same in ("goodness=meansq", "algo.loss=symba", "algo.theta=3", "tracking.experiment=x"):
        assert _hash("algo=bp", same) == bp, same
    assert _hash("algo=bp", "skip_finished=false", "resume=false", "dataset.root=/elsewhere") == bp
    assert _hash("algo=ff") != _hash("algo=ff", "goodness=meansq")
    # FF reads the micro-batches since it has them: at 1, its hash is the one of its runs before
    assert _hash("algo=ff") == _hash("algo=ff", "trainer.grad_accum_steps=1")
    assert _hash("algo=ff") != _hash("algo=ff", "trainer.grad_accum_steps=4")
    assert _hash("activation=relu", "activation.nu=3") == _hash("activation=relu")
    for other in ("algo=bp_ckpt", "trainer.seed=1", "optimizer.lr=0.01", "measure.memory=false"):
        assert _hash("algo=bp", other) != bp, other
    assert _hash("algo=bp", device="cuda") != bp


# Hashes recorded before the relevance of keys moved into the schema (issue 23): the FINISHED
# runs recorded with them must still be found by sweeps that skip finished jobs. A preset whose
# values are changed on purpose gets a new hash (its old runs are then not reused): update it.
PINNED = {
    (): "35299695b9379766",
    ("algo=bp",): "4e3d3030b520c92b",
    ("+experiment=hinton_mnist",): "fef755711a38763d",
    ("+experiment=hinton_mnist_bp",): "f0cd03d5455a26e0",
    ("+experiment=mnist_conv",): "23248af765931c0e",
    ("+experiment=quick_mnist",): "dba51f3be9d3664b",
    ("+experiment=cifar10_local",): "b5a7445a09a4996d",
    ("+experiment=unsupervised_mnist",): "f7da2a28fc8e8bd1",
    ("+study=mnist_mlp",): "39480aeaf7b92e2e",
    ("model=local", "algo=bp_ckpt"): "cedcf9b3fd01dec9",
    ("activation=tdist",): "4e1235150b20b207",
    ("goodness=split",): "0e53032ee87aee18",
    ("optimizer=sgd", "algo=bp"): "040e8084a0c283a3",
}


@pytest.mark.parametrize("overrides", PINNED, ids=lambda o: " ".join(o) or "defaults")
def test_settings_hashes_of_recorded_presets_do_not_change(overrides):
    assert _hash(*overrides) == PINNED[overrides]


def test_settings_hash_on_cuda_is_the_one_recorded():
    assert _hash(device="cuda") == "f67736fb0d497a88"


def _changed(dotted: str, f, value):
    """Another value of the key: another allowed option, the other bool, a larger number."""
    if allowed(f):
        return next(c for c in allowed(f) if c != value)
    if isinstance(value, bool):
        return not value
    if isinstance(value, int | float):
        return value * 2 + 1
    if isinstance(value, str):
        return value + "x"
    if OmegaConf.is_list(value):
        return [c + 1 for c in value]
    if f.type is typing.Any and value is None:  # a `_target_` node: model.blocks, dataset.train
        return {"_target_": "elsewhere.make"}
    kinds = [t for t in typing.get_args(f.type) if t is not type(None)]  # an unset key
    return {int: 7, float: 0.5, str: "elsewhere", bool: True}[kinds[0]]


def _with(cfg, dotted: str, value):
    changed = copy.deepcopy(cfg)
    OmegaConf.update(changed, dotted, value, merge=False)
    return changed


BASES = [
    (),
    ("algo=bp",),
    ("algo=bp_ckpt", "model=conv"),
    ("model=local", "goodness.spatial=position", "model.norm_scope=position"),
    ("model.blackbox=quantize",),
    ("dataset=mnist", "optimizer=sgd"),
    ("goodness=split", "activation=tdist"),
    ("algo.loss=symba", "algo.negatives=hybrid", "algo.label_input=none"),
    ("+experiment=hinton_mnist",),
]


@pytest.mark.parametrize("overrides", BASES, ids=lambda o: " ".join(o) or "defaults")
def test_every_key_changes_the_hash_unless_it_declares_otherwise(overrides):
    cfg = compose(overrides)
    before = settings_hash(cfg, "cpu")
    for dotted, f in schema_keys():
        if dotted == "trainer.device":  # hashed as the device resolved, the argument
            continue
        changed = _with(cfg, dotted, _changed(dotted, f, OmegaConf.select(cfg, dotted)))
        same = settings_hash(changed, "cpu") == before
        declared = ignored(cfg, dotted) and ignored(changed, dotted)
        assert same == declared, f"{dotted}: hash {'kept' if same else 'changed'}"


def test_a_new_learner_model_and_data_set_get_every_key_hashed(monkeypatch):
    """Registered the documented way (docs/extending.md), with no rule written for them: every
    key that can change a result counts, so no sweep reuses a run made with other settings."""
    from ffbench import data, learners, models

    monkeypatch.setitem(learners.LEARNERS, "toy_rule", learners.LEARNERS["bp"])
    monkeypatch.setitem(models.LAYERS, "toy_layers", models.LAYERS["mlp"])
    monkeypatch.setitem(data.LOADERS, "toy_data", data.LOADERS["digits"])
    # the other options, those that read every key that is theirs
    cfg = compose(
        [
            "model.blackbox=quantize",
            "model.blackbox_grad=straight_through",
            "algo.evaluation=readout",
            "algo.class_goodness=projection",
            "algo.loss=symba",
            "algo.negatives=hybrid",
            "goodness=split",
            "activation=tdist",
            "optimizer=sgd",
            "dataset.augment=crop_flip",
            "trainer.lr_schedule=cosine",
        ]
    )
    for dotted, name in (
        ("algo.name", "toy_rule"),
        ("model.name", "toy_layers"),
        ("dataset.name", "toy_data"),
    ):
        cfg = _with(cfg, dotted, name)
    validate(cfg)  # they are options like the others
    before = settings_hash(cfg, "cpu")
    never = [d for d, f in schema_keys() if not f.metadata["result"]]
    assert never == [
        "dataset.root",
        "dataset.mirror",
        "dataset.checksums",
        "trainer.checkpoint",
        *(d for d, _ in schema_keys() if d.startswith("tracking.")),
        "skip_finished",
        "resume",
    ]
    for dotted, f in schema_keys():
        if dotted in never or dotted == "trainer.device":  # the resolved device is hashed
            continue
        changed = _with(cfg, dotted, _changed(dotted, f, OmegaConf.select(cfg, dotted)))
        assert settings_hash(changed, "cpu") != before, dotted
