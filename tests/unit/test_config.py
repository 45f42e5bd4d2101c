"""The presets compose and follow their recipes; the typed schema rejects what it should.
(Each group's options and each key's bound: test_schema.py.)"""

import pytest
from helpers import REPO
from hydra import compose, initialize_config_module
from hydra.errors import ConfigCompositionException

from ffbench.config import register_schemas, validate
from ffbench.errors import FFBenchError

CONF = REPO / "conf"


@pytest.fixture(scope="module", autouse=True)
def hydra_context():
    register_schemas()
    with initialize_config_module(config_module="ffbench.conf", version_base="1.3"):
        yield


PRESETS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))


def test_the_presets_of_the_issue_exist():
    assert {"hinton_mnist", "hinton_mnist_bp", "quick_mnist", "unsupervised_mnist"} <= set(PRESETS)


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_composes_and_validates(preset):
    cfg = compose("config", overrides=[f"+experiment={preset}"])
    validate(cfg)


def test_hinton_preset_follows_the_reference_recipe():
    cfg = compose("config", overrides=["+experiment=hinton_mnist"])
    assert (cfg.model.depth, cfg.model.width, cfg.trainer.epochs) == (4, 2000, 60)
    assert (cfg.algo.name, cfg.goodness.name, cfg.activation.name) == ("ff", "sumsq", "relu")
    assert cfg.model.norm == "mean_square" and cfg.algo.theta is None  # theta = width
    assert cfg.algo.peer_norm == 0.03 and cfg.trainer.lr_schedule == "linear_decay"
    # The reference's steps 0.01 * (0.9 d + 0.1 g) in torch's summed-momentum form.
    assert (cfg.optimizer.lr, cfg.optimizer.momentum, cfg.algo.readout_lr) == (0.001, 0.9, 0.01)
    bp = compose("config", overrides=["+experiment=hinton_mnist_bp"])
    assert bp.algo.name == "bp" and (bp.model.depth, bp.model.width) == (4, 2000)
    bf16 = compose("config", overrides=["+experiment=hinton_mnist_bf16"])
    assert bf16.trainer.precision == "bf16" and bf16.trainer.matmul_reference
    assert bf16.algo == cfg.algo and bf16.model == cfg.model and bf16.optimizer == cfg.optimizer


def test_memory_depth_preset_composes_and_sweeps_algorithms_and_depths():
    """A preset (added with +experiment=...) sets global keys and the sweep it runs."""
    cfg = compose("config", overrides=["+experiment=memory_depth"], return_hydra_config=True)
    validate(cfg)
    assert cfg.trainer.epochs == 1 and cfg.model.width == 1024
    assert dict(cfg.hydra.sweeper.params) == {"algo": "ff,bp,bp_ckpt", "model.depth": "1,2,4,8,16"}


STUDIES = {"mnist_mlp": "mnist", "fashion_mnist_mlp": "fashion_mnist"}


@pytest.mark.parametrize(("study", "dataset"), STUDIES.items())
def test_a_study_gives_ff_and_bp_the_same_search(study, dataset):
    """Both algorithms swept over one learning-rate grid (4+ values spanning 30x or more) and
    three seeds, on the same 2 x 500 net and budget; its runs in an experiment of their own."""
    cfg = compose("config", overrides=[f"+study={study}"], return_hydra_config=True)
    validate(cfg)
    params = dict(cfg.hydra.sweeper.params)
    assert params.keys() == {"algo", "optimizer.lr", "trainer.seed"}
    assert params["algo"] == "ff,bp" and params["trainer.seed"] == "0,1,2"
    grid = sorted(float(lr) for lr in params["optimizer.lr"].split(","))
    assert len(grid) >= 4 and grid[-1] / grid[0] >= 30
    assert (cfg.dataset.name, cfg.model.name, cfg.model.depth, cfg.model.width) == (
        dataset,
        "mlp",
        2,
        500,
    )
    assert cfg.optimizer.name == "adam" and cfg.tracking.experiment == f"study-{study}"
    bp = compose("config", overrides=[f"+study={study}", "algo=bp"])
    assert bp.trainer == cfg.trainer and bp.optimizer == cfg.optimizer  # the same budget


def test_the_command_line_narrows_a_study():
    cfg = compose("config", overrides=["+study=mnist_mlp", "dataset=digits", "trainer.epochs=1"])
    assert (cfg.dataset.name, cfg.trainer.epochs, cfg.model.width) == ("digits", 1, 500)


def test_defaults_are_ff_on_digits():
    cfg = compose("config")
    assert (cfg.algo.name, cfg.dataset.name, cfg.goodness.name) == ("ff", "digits", "sumsq")
    assert cfg.trainer.device == "auto"


def test_misspelt_key_is_rejected():
    with pytest.raises(ConfigCompositionException) as err:
        compose("config", overrides=["trainer.epoch=3"])
    assert "Key 'epoch' not in 'TrainerConfig'" in str(err.value.__cause__)


def test_appended_unknown_key_is_caught_by_validate():
    """Hydra lets `+key=value` add keys to a typed config; ffbench would silently ignore them."""
    cfg = compose("config", overrides=["+trainer.epoch=3"])
    with pytest.raises(
        FFBenchError, match="trainer.epoch is not a setting of trainer: did you mean trainer.epochs"
    ):
        validate(cfg)
