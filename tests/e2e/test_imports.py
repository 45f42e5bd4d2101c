"""Layers that point one way: the schema, the registries' names, the settings hash and
`ffbench-sync` (which only replays journals) import without the training stack. A process of
its own each: the test process has imported torch already."""

import subprocess
import sys
from pathlib import Path

from helpers import FFBENCH, clean_env


def _imported(command: list[str]) -> set[str]:
    """The modules `command` (a Python script and its arguments) imports, by -X importtime."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", *command],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [line for line in done.stderr.splitlines() if line.startswith("import time:")]
    return {line.split("|")[-1].strip() for line in lines}


def test_the_schema_its_option_names_and_the_settings_hash_import_without_torch():
    """The registries' names too (config.Registry reads them from their modules' source): every
    key's allowed values, and a config composed with its options registered from them."""
    code = (
        "from ffbench import config, settings; "
        "names = {d: config.allowed(f) for d, f in config.schema_keys()}; "
        "assert 'bp' in names['algo.name'] and 'relu' in names['activation.name'], names; "
        "print(config.compose(['algo=bp']).algo.name, settings.settings_hash.__name__)"
    )
    modules = _imported(["-c", code])
    assert {"ffbench.config", "ffbench.settings", "hydra"} <= modules
    assert "torch" not in modules


def test_ffbench_sync_help_imports_no_torch():
    sync = str(Path(FFBENCH).with_name("ffbench-sync"))
    modules = _imported([sync, "--help"])
    assert "ffbench.sync" in modules
    assert "torch" not in modules
