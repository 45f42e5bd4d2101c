"""Checks of a sweep made before anything is written: every job composes and passes ffbench's
value checks, or the sweep stops with one line and leaves no folder, store or parent run.

Hydra composes a sweep's jobs only right before launching them, after the callbacks have
created the sweep's folder, its store and its parent run (sweep.SweepRun): so the callback
composes them all first, here. That the store answers is checked where a client is made
(store.connect).
"""

import sys
from typing import NoReturn

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import CompactHydraException
from omegaconf.errors import OmegaConfBaseException

from ffbench.config import validate
from ffbench.errors import FFBenchError

BASIC_SWEEPER = f"{BasicSweeper.__module__}.{BasicSweeper.__qualname__}"


def sweep_jobs(config) -> list[list[str]]:
    """The overrides of every job of a basic sweep (the command line's and hydra.sweeper.params),
    in Hydra's order; [] for other sweepers (optuna chooses its jobs as it goes)."""
    sweeper = config.hydra.sweeper
    if sweeper.get("_target_") != BASIC_SWEEPER:
        return []
    params = [f"{key}={value}" for key, value in (sweeper.get("params") or {}).items()]
    parser = OverridesParser.create(config_loader=GlobalHydra.instance().config_loader())
    overrides = parser.parse_overrides([*params, *config.hydra.overrides.task])
    return [job for batch in BasicSweeper.split_arguments(overrides, None) for job in batch]


def check_sweep(config) -> list[list[str]]:
    """Compose every job of the sweep and check its values, as each job would, before any
    job starts: an unknown option, key or type raises Hydra's own error, a bad value an
    FFBenchError naming the job's overrides. Returns the jobs (sweep_jobs)."""
    loader = GlobalHydra.instance().config_loader()
    jobs = sweep_jobs(config)
    for job in jobs:
        job_config = loader.load_sweep_config(config, list(job))
        try:
            validate(job_config)
        except FFBenchError as err:
            raise FFBenchError(f"{err} (in the sweep's job {' '.join(job)})") from err
    return jobs


def exit_with(err: Exception) -> NoReturn:
    """Print a failed check the way a single run shows it, and exit 1. Raised as SystemExit
    because Hydra turns any other exception in a callback into a warning and goes on."""
    if isinstance(err, FFBenchError):
        lines = [f"ffbench: error: {err}"]
    elif isinstance(err, CompactHydraException):  # Hydra's own wording, as for a single run
        lines = [str(err)]
        if isinstance(err.__cause__, OmegaConfBaseException):
            lines.append(str(err.__cause__))
    else:
        lines = [f"ffbench: error: {type(err).__name__}: {err}"]
    print(*lines, sep="\n", file=sys.stderr)
    sys.exit(1)
