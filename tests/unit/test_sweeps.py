"""Which settings count as the same job for the duplicate check of sweeps (the settings hash):
what the algorithm ignores does not count. The sweeps themselves are in tests/e2e/test_sweeps.py."""

from ffbench.config import compose
from ffbench.settings import settings_hash


def _hash(*overrides: str, device: str = "cpu") -> str:
    return settings_hash(compose(overrides), device)


def test_settings_hash_ignores_what_the_algorithm_ignores():
    bp = _hash("algo=bp")
    for same in ("goodness=meansq", "algo.loss=symba", "algo.theta=3", "tracking.experiment=x"):
        assert _hash("algo=bp", same) == bp, same
    assert _hash("algo=bp", "skip_finished=false", "resume=false", "dataset.root=/elsewhere") == bp
    assert _hash("algo=ff") != _hash("algo=ff", "goodness=meansq")
    assert _hash("algo=ff") == _hash("algo=ff", "trainer.grad_accum_steps=4")  # BP only
    assert _hash("activation=relu", "activation.nu=3") == _hash("activation=relu")
    for other in ("algo=bp_ckpt", "trainer.seed=1", "optimizer.lr=0.01", "measure.memory=false"):
        assert _hash("algo=bp", other) != bp, other
    assert _hash("algo=bp", device="cuda") != bp
