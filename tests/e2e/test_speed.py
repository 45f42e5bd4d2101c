"""torch.compile (which compiles in worker processes) trains as eager does: slow (half a minute
of compiling, `make test-slow` and CI). The throughput each run records and bf16 autocast are
in tests/app/test_speed.py; the FLOP counts and the other speed options in
tests/unit/test_speed.py."""

import pytest
from helpers import QUICK, digits_job


@pytest.mark.slow
@pytest.mark.parametrize("algo", ["ff", "bp"])
def test_compiled_training_matches_eager(algo):
    results = []
    for compiled in (False, True):
        job = digits_job(
            [*QUICK, f"algo={algo}", "trainer.epochs=1", f"trainer.compile={compiled}"]
        )
        results.append(
            job.learner.train_epoch(
                job.data.x_train[:256], job.data.y_train[:256], job.optimizer, 64
            )
        )
    assert results[1]["train_loss"] == pytest.approx(results[0]["train_loss"], rel=1e-4)
