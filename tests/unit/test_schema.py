"""The schema is the one home of every key: its defaults, allowed values and bounds are what
Hydra composes and validate() enforces, and the docs and --help are generated from it."""

from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from ffbench import config, data, experiment, ff_data, goodness, learners, models
from ffbench.activations import ACTIVATIONS
from ffbench.config import (
    BOUNDS,
    GROUPS,
    allowed,
    compose,
    options_markdown,
    schema_keys,
    validate,
)
from ffbench.errors import FFBenchError

REPO = Path(__file__).resolve().parents[2]
CONF = REPO / "conf"


def test_docs_options_page_is_generated_from_the_schema():
    page = (REPO / "docs" / "options.md").read_text()
    assert page == options_markdown(), "docs/options.md is stale: run `make docs`"


def test_every_key_has_a_one_line_doc():
    for dotted, f in schema_keys():
        doc = f.metadata["doc"]
        assert doc and "\n" not in doc and doc.endswith("."), dotted


@pytest.mark.parametrize(
    ("key", "registry"),
    [
        ("dataset.name", data.LOADERS),
        ("model.name", models.LAYERS),
        ("algo.name", learners.LEARNERS),
        ("algo.loss", goodness.LOSSES),
        ("algo.negatives", ff_data.NEGATIVES),
        ("algo.label_input", ff_data.LABEL_INPUTS),
        ("goodness.name", goodness.GOODNESS),
        ("activation.name", ACTIVATIONS),
        ("optimizer.name", experiment.OPTIMIZERS),
        ("trainer.lr_schedule", experiment.LR_SCHEDULES),
    ],
)
def test_allowed_values_are_the_registry_names(key, registry):
    f = dict(schema_keys())[key]
    assert allowed(f) == tuple(registry)


@pytest.mark.parametrize(
    ("group", "name"),
    [(g, n) for g in GROUPS for n in allowed(dict(schema_keys())[f"{g}.name"])],
)
def test_every_registry_name_is_an_option_that_composes_and_validates(group, name):
    cfg = compose([f"{group}={name}"])
    assert cfg[group].name == name
    validate(cfg)


def test_option_files_hold_only_what_differs_from_the_schema():
    schema = OmegaConf.structured(config.Config)
    for path in CONF.glob("*/*.yaml"):
        group = path.parent.name
        if group in ("experiment", "study"):
            continue  # presets and studies spell out the whole recipe on purpose
        values = yaml.safe_load(path.read_text())
        for key, value in values.items():
            if key != "name":
                assert schema[group][key] != value, f"{path.name}: {group}.{key} repeats the schema"


def test_conv_and_local_get_the_schema_sizes():
    for model in ("conv", "local"):
        m = compose([f"model={model}"]).model
        assert (m.channels, m.kernel, m.stride, m.padding) == (32, 5, 2, 2)


BAD = {"positive": 0, "non_negative": -1, "fraction": 1.0}


@pytest.mark.parametrize(
    "key", [k for k, f in schema_keys() if f.metadata["bound"]], ids=lambda k: k
)
def test_every_bounded_key_rejects_a_value_outside_its_bound(key):
    bound = dict(schema_keys())[key].metadata["bound"]
    cfg = compose([f"{key}={BAD[bound]}"])
    _, says, _ = BOUNDS[bound]
    got = OmegaConf.select(cfg, key)  # a float key reads -1 as -1.0
    with pytest.raises(FFBenchError, match=rf"^{key} {says} \(got {got}\): set {key}="):
        validate(cfg)


def test_val_size_zero_is_rejected_before_the_data_are_read():
    with pytest.raises(FFBenchError, match="dataset.val_size must be positive"):
        validate(compose(["dataset.val_size=0"]))


def test_a_value_outside_the_choices_names_them():
    cfg = compose(["trainer.precision=fp8"])
    with pytest.raises(
        FFBenchError, match="trainer.precision=fp8 is not supported: choose one of fp32, tf32, bf16"
    ):
        validate(cfg)
