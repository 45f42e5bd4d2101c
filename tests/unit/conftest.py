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

from ffbench import experiment


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
