"""Fixtures of both tiers (tests/unit, tests/e2e). Plain helpers are in helpers.py, which the
tests import as `from helpers import ...` (pyproject puts this folder on sys.path)."""

import shutil
import tempfile
from pathlib import Path

import pytest
from helpers import Mirror, make_mnist, postgres, postgres_bin


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


@pytest.fixture(scope="session")
def postgres_uri():
    """A PostgreSQL server for the whole test session (started once), skipped where Debian's
    `postgresql` package or the psycopg driver (pip install ffbench[server]) is missing."""
    if postgres_bin() is None:
        pytest.skip("no PostgreSQL: apt-get install postgresql (.ci/run does)")
    pytest.importorskip("psycopg", reason="no psycopg: pip install -e '.[server]'")
    # not under pytest's own temporary folder: that is private to this user, and PostgreSQL
    # runs as the `postgres` user when the tests run as root
    folder = Path(tempfile.mkdtemp(prefix="ffbench-postgres-"))
    try:
        with postgres(folder) as uri:
            yield uri
    finally:
        shutil.rmtree(folder, ignore_errors=True)
