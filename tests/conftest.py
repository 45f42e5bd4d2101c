"""Fixtures of both tiers (tests/unit, tests/e2e). Plain helpers are in helpers.py, which the
tests import as `from helpers import ...` (pyproject puts this folder on sys.path)."""

from pathlib import Path

import pytest
from helpers import Mirror, make_mnist


@pytest.fixture
def workdir(tmp_path) -> Path:
    """An empty launch directory, far from the repository."""
    path = tmp_path / "launch"
    path.mkdir()
    return path


@pytest.fixture
def mnist_dir(tmp_path) -> Path:
    """Tiny MNIST-format files (see helpers.make_mnist) in a folder of their own."""
    return make_mnist(tmp_path / "mnist")


@pytest.fixture
def mirror():
    """A data set mirror on a thread of this process (helpers.Mirror), stopped afterwards."""
    server = Mirror()
    yield server
    server.close()
