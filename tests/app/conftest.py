"""The app tier's promises, checked and kept: whole jobs and sweeps run by the Hydra app in the
test process (helpers.ffbench_here, helpers.train_on_digits), never the installed command or
another process (tests/e2e starts those); the one command a job starts itself is git, which
reads the commit of the code for the run's tag (tracking.git_commit). And a job whose
trainer.num_threads is unset computes on one thread, not one per core: the nets are tiny,
and one thread gives the same numbers on every machine, however busy."""

import os
import shutil
import subprocess

import pytest
from helpers import LIBRARY_LOOKUP

from ffbench import experiment
from ffbench.store import ready_store


@pytest.fixture(autouse=True)
def no_processes(monkeypatch):
    start = subprocess.Popen._execute_child

    def only_git(self, args, *rest, **kwargs):
        if tuple(args) != LIBRARY_LOOKUP and os.path.basename(str(args[0])) != "git":
            raise AssertionError(f"an app test started {args}: move it to tests/e2e")
        return start(self, args, *rest, **kwargs)

    def refuse(*args, **kwargs):
        raise AssertionError("an app test forked a process: move it to tests/e2e")

    monkeypatch.setattr(subprocess.Popen, "_execute_child", only_git)
    monkeypatch.setattr(os, "fork", refuse)
    monkeypatch.setattr(os, "posix_spawn", refuse)


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    monkeypatch.setattr(experiment, "DEFAULT_THREADS", 1)  # trainer.num_threads unset


@pytest.fixture(scope="session")
def empty_store(tmp_path_factory):
    """An MLflow SQLite store with its tables made and no run: creating them takes seconds."""
    db = tmp_path_factory.mktemp("store") / "mlflow.db"
    ready_store(f"sqlite:///{db}")
    return db


@pytest.fixture
def launch(workdir, empty_store):
    """A launch directory whose default store outputs/mlflow.db is ready: a copy of
    empty_store. (Tests of a store that ffbench must create, or must not, use workdir.)"""
    (workdir / "outputs").mkdir()
    shutil.copy(empty_store, workdir / "outputs" / "mlflow.db")
    return workdir
