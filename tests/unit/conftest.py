"""The unit tier's promise, checked: no test here starts a process (the installed commands,
servers, git and compiler workers belong in tests/e2e)."""

import os
import subprocess

import pytest

# ctypes.util.find_library runs `ldconfig -p` to find a library: ffbench.measure looks up the
# C library that way for malloc_trim. A lookup, not a process a test starts.
LIBRARY_LOOKUP = ("/sbin/ldconfig", "-p")


@pytest.fixture(autouse=True)
def no_processes(monkeypatch):
    start = subprocess.Popen._execute_child

    def only_library_lookups(self, args, *rest, **kwargs):
        if tuple(args) != LIBRARY_LOOKUP:
            raise AssertionError(f"a unit test started {args}: move it to tests/e2e")
        return start(self, args, *rest, **kwargs)

    def refuse(*args, **kwargs):
        raise AssertionError("a unit test forked a process: move it to tests/e2e")

    monkeypatch.setattr(subprocess.Popen, "_execute_child", only_library_lookups)
    monkeypatch.setattr(os, "fork", refuse)
    monkeypatch.setattr(os, "posix_spawn", refuse)
