"""Accuracy on real MNIST (`make test-slow`, minutes): needs FFBENCH_DATA pointing at the
four IDX files, e.g. FFBENCH_DATA=/path/to/mnist make test-slow."""

import pytest
from helpers import all_runs, clean_env, real_mnist, run_ffbench

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("algo", ["ff", "bp"])
def test_quick_mnist_reaches_97_percent(workdir, algo):
    env = clean_env(FFBENCH_DATA=real_mnist())
    result = run_ffbench(workdir, "+experiment=quick_mnist", f"algo={algo}", env=env, timeout=1800)
    assert result.returncode == 0, result.stderr
    [run] = all_runs(workdir)
    assert run.data.metrics["test_accuracy"] >= 0.97
