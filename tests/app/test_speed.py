"""Speed, in whole jobs of the app in this process: each run records the throughput it
achieved, and bf16 autocast learns as well as float32. torch.compile, which compiles in worker
processes, is in tests/e2e/test_speed.py; the FLOP counts and the other speed options in
tests/unit/test_speed.py."""

import pytest
from helpers import ONE_THREAD, QUICK, all_runs, ffbench_here, train_on_digits

from ffbench.config import compose
from ffbench.flops import train_flops_per_example


def test_each_run_records_its_achieved_gflops(launch):
    assert ffbench_here(launch, *QUICK).returncode == 0
    [run] = all_runs(launch)
    m = run.data.metrics
    cfg = compose(QUICK)
    expected = train_flops_per_example(cfg, 64, 10) * 2 * 1257 / m["train_time_s"] / 1e9
    assert m["train_gflops_per_s"] == pytest.approx(expected, rel=1e-3)


@pytest.mark.parametrize("algo", ["ff", "bp"])
def test_bf16_autocast_learns_as_well_as_float32(algo):
    """The autocast of a whole epoch must not reuse the first step's bf16 weights: before
    that was fixed, BP diverged and FF stalled."""
    final = {}
    for precision in ("fp32", "bf16"):
        overrides = [ONE_THREAD, "trainer.epochs=10", "model.width=128", f"algo={algo}"]
        result = train_on_digits([*overrides, f"trainer.precision={precision}"])
        final[precision] = result["test_accuracy"]
    assert final["bf16"] > final["fp32"] - 0.08  # measured: FF 0.747 against 0.775
    assert final["bf16"] > (0.6 if algo == "ff" else 0.9)  # chance is 0.1
