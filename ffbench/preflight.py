"""Checks made before anything is written: every job of a sweep composes and passes
ffbench's value checks, an HTTP tracking server answers, a new SQLite store is set up by one
process at a time.

Hydra composes a sweep's jobs only right before launching them, after the callbacks have
created the sweep's folder, its store and its parent run; MLflow retries a refused HTTP
connection for minutes (MLFLOW_HTTP_REQUEST_MAX_RETRIES, MLFLOW_HTTP_REQUEST_TIMEOUT), and
creates the tables of a new SQLite store without a lock, so that two sweeps starting together
on a new store both migrate it and one of them fails ("duplicate column name").
"""

import os
import re
import sys
from pathlib import Path
from typing import NoReturn

import requests
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import CompactHydraException
from mlflow.tracking import MlflowClient
from omegaconf.errors import OmegaConfBaseException

from ffbench.config import validate
from ffbench.errors import FFBenchError

BASIC_SWEEPER = f"{BasicSweeper.__module__}.{BasicSweeper.__qualname__}"
PROBE_TIMEOUT_S = 5.0
_answered: set[str] = set()  # servers found up in this process
_created: set[str] = set()  # SQLite stores whose tables this process has seen or made

try:
    import fcntl
except ImportError:  # Windows: no flock; one process at a time creates a new store there
    fcntl = None


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


def check_sweep(config) -> None:
    """Compose every job of the sweep and check its values, as each job would, before any
    job starts: an unknown option, key or type raises Hydra's own error, a bad value an
    FFBenchError naming the job's overrides."""
    loader = GlobalHydra.instance().config_loader()
    for job in sweep_jobs(config):
        job_config = loader.load_sweep_config(config, list(job))
        try:
            validate(job_config)
        except FFBenchError as err:
            raise FFBenchError(f"{err} (in the sweep's job {' '.join(job)})") from err


def _short_reason(err: Exception) -> str:
    found = re.search(r"\[Errno -?\d+\] ([^'\")]+)", str(err))
    if found:
        return found.group(1).strip()
    if isinstance(err, requests.Timeout):
        return f"no answer within {PROBE_TIMEOUT_S:g} s"
    return type(err).__name__


def check_server(uri: str) -> None:
    """For an http(s) tracking URI: one request with a short timeout, so that a server that is
    down or unreachable stops the run at once with one line. Any HTTP answer counts (a server
    that wants a login, or puts MLflow under a path without /health, is up)."""
    if not uri.startswith(("http://", "https://")) or uri in _answered:
        return
    verify: bool | str = os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH") or True
    if os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() == "true":
        verify = False
    cert = os.environ.get("MLFLOW_TRACKING_CLIENT_CERT_PATH") or None
    try:
        requests.get(
            f"{uri.rstrip('/')}/health", timeout=PROBE_TIMEOUT_S, verify=verify, cert=cert
        ).close()
    except requests.RequestException as err:
        raise FFBenchError(
            f"cannot reach the MLflow tracking server at {uri} ({_short_reason(err)}): start "
            "it, or set MLFLOW_TRACKING_URI (or tracking.uri) to a server that answers; unset "
            "both to record in the local store outputs/mlflow.db"
        ) from None
    _answered.add(uri)


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


def ready_store(uri: str) -> None:
    """Make the store at `uri` ready for a client: an http(s) server must answer
    (check_server); a SQLite store gets its folder and its tables under an exclusive lock on
    <store>.lock beside it, so that processes starting together never migrate it twice."""
    check_server(uri)
    if not uri.startswith("sqlite:///") or uri in _created:
        return
    db = Path(uri.removeprefix("sqlite:///"))
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.with_name(f"{db.name}.lock"), "a") as lock:
        if fcntl is not None:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        # The store, made on a client's first call and cached for the process, creates the
        # tables of a new database and brings an old one's schema up to date.
        MlflowClient(uri).search_experiments(max_results=1)
    _created.add(uri)
