"""Nothing of our development machines in what we publish: no tracked file names an absolute
path of a developer's machine (a folder in /work, /root or /home), nor the development folder
`shared` beside the checkout that holds our data sets: where benchmarks, tests or the Makefile
need real MNIST, the caller passes it in (FFBENCH_DATA)."""

import re
import shutil
import subprocess

import pytest
from helpers import REPO, TRACKED_FILES

# Written so that this file does not match itself.
MACHINE_PATH = re.compile(r"(?<![\w.~-])/(work|root|home)/|\.\./shared\b")


def tracked_files() -> list[str]:
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout: no list of tracked files")
    listed = subprocess.run(TRACKED_FILES, capture_output=True, check=True).stdout
    return [name for name in listed.decode().split("\0") if name]


def test_no_tracked_file_names_a_development_machine_s_paths():
    found = []
    for name in tracked_files():
        path = REPO / name
        if not path.is_file():  # deleted in the working tree, not yet in a commit
            continue
        try:
            text = path.read_text()
        except UnicodeDecodeError:  # pictures, compressed data
            continue
        for number, line in enumerate(text.splitlines(), start=1):
            if MACHINE_PATH.search(line):
                found.append(f"{name}:{number}: {line.strip()}")
    assert not found, "\n".join(found)
