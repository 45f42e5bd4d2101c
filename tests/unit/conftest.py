"""The unit tier's promises, checked and kept: no test here starts a process (the installed
commands, servers, compiler workers and whole jobs belong in tests/e2e and tests/app), and
torch computes on one thread (tiny tensors: more threads only add waiting, much of it on a busy
2-core machine). Two reads are let through: ldconfig's (LIBRARY_LOOKUP) and git's list of
the tracked files (TRACKED_FILES, for test_tracked_files.py)."""

import os
import subprocess

import pytest
import torch
from helpers import LIBRARY_LOOKUP, TRACKED_FILES
from hydra.core.config_store import ConfigStore

from ffbench import experiment
from ffbench.config import GROUPS, schema_keys, written_keys


@pytest.fixture(autouse=True)
def no_processes(monkeypatch):
    start = subprocess.Popen._execute_child

    def only_library_lookups(self, args, *rest, **kwargs):
        if tuple(map(str, args)) not in (LIBRARY_LOOKUP, TRACKED_FILES):
            raise AssertionError(f"a unit test started {args}: move it to tests/e2e")
        return start(self, args, *rest, **kwargs)

    def refuse(*args, **kwargs):
        raise AssertionError("a unit test forked a process: move it to tests/e2e")

    monkeypatch.setattr(subprocess.Popen, "_execute_child", only_library_lookups)
    monkeypatch.setattr(os, "fork", refuse)
    monkeypatch.setattr(os, "posix_spawn", refuse)


@pytest.fixture(autouse=True, scope="package")
def one_thread():
    """For the tests of this folder only: the tiers after them get the thread count back. A
    job (helpers.digits_job) sets the thread count itself: one too, where its config leaves
    trainer.num_threads unset."""
    threads, default = torch.get_num_threads(), experiment.DEFAULT_THREADS
    torch.set_num_threads(1)
    experiment.DEFAULT_THREADS = 1
    yield
    torch.set_num_threads(threads)
    experiment.DEFAULT_THREADS = default


@pytest.fixture(autouse=True)
def no_test_options_left():
    """An option a test registers (a toy entry it adds to a registry, which config.compose
    then stores in Hydra's ConfigStore) is taken out of the store after it: a later test in
    this process, of any tier (make test runs them all in each worker), sees the built-in
    options only, as `ffbench --help` lists them."""
    yield
    repo, keys = ConfigStore.instance().repo, dict(schema_keys())
    for group in GROUPS:
        choices = keys[f"{group}.name"].metadata["choices"]
        built_in = {*choices.first, *written_keys(choices.module, choices.name)}
        options = repo.get(group, {})
        for entry in [e for e in options if e.removesuffix(".yaml") not in built_in]:
            del options[entry]
