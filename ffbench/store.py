"""Where runs go: the MLflow store's URI, a client on it, and the experiment the runs belong to.

By default every run lands in a SQLite store under the launch directory's outputs/, with
artifacts beside it; MLFLOW_TRACKING_URI and MLFLOW_EXPERIMENT_NAME override both.

A client is handed out only once its store is ready: an HTTP tracking server must answer one
quick request, since MLflow retries a refused connection for minutes
(MLFLOW_HTTP_REQUEST_MAX_RETRIES, MLFLOW_HTTP_REQUEST_TIMEOUT); a new SQLite store gets its
tables from one process at a time, since MLflow creates them without a lock, so that two sweeps
starting together on a new store both migrate it and one of them fails ("duplicate column
name").

A leaf module: it imports nothing of ffbench but the error type, so that `ffbench-report`
(compare.py) and the run bookkeeping (tracking.py, sweep.py) can both use it.
"""

import logging
import os
import re
from pathlib import Path

import mlflow
import requests
from mlflow.tracking import MlflowClient

from ffbench.errors import TrackingUnreachable

try:
    import fcntl
except ImportError:  # Windows: no flock; one process at a time creates a new store there
    fcntl = None

# Creating the SQLite store announces its table migrations at INFO level: noise for a user.
logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)

PROBE_TIMEOUT_S = 5.0
# Requests to a tracking server give up within seconds instead of MLflow's minutes of retries:
# a job then goes on recording to its journal (journal.py) and sends it once the server is
# back. Environment variables of the same names set by the user win.
SHORT_RETRIES = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
}
_answered: set[str] = set()  # servers found up in this process
_created: set[str] = set()  # SQLite stores whose tables this process has seen or made


def tracking_uri(cfg, launch_dir: str) -> str:
    """cfg.uri, else $MLFLOW_TRACKING_URI, else SQLite in <launch dir>/outputs/mlflow.db."""
    uri = cfg.uri or os.environ.get("MLFLOW_TRACKING_URI")
    return uri or f"sqlite:///{Path(launch_dir, 'outputs', 'mlflow.db').resolve()}"


def connect(cfg, launch_dir: str) -> MlflowClient:
    """A client on the store of tracking config `cfg`, once that store is ready; MLflow's
    fluent API (mlflow.start_run) is pointed at the same store."""
    uri = tracking_uri(cfg, launch_dir)
    # a server that is down fails in seconds; a new SQLite store is set up by one process
    ready_store(uri)
    mlflow.set_tracking_uri(uri)
    return MlflowClient(uri)


def experiment_name(cfg) -> str:
    return os.environ.get("MLFLOW_EXPERIMENT_NAME") or cfg.experiment


def experiment_id(client: MlflowClient, cfg, launch_dir: str) -> str:
    """Id of the configured experiment, created on first use."""
    return experiment_named(client, experiment_name(cfg), launch_dir)


def experiment_named(client: MlflowClient, name: str, launch_dir: str) -> str:
    """Id of experiment `name`, created on first use."""
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    artifacts = None
    if client.tracking_uri.startswith("sqlite:"):
        # Keep artifacts beside the local store rather than in ./mlruns of whatever directory.
        artifacts = Path(launch_dir, "outputs", "mlartifacts").resolve().as_uri()
    try:
        # MLflow 3's UI opens an experiment of unknown kind on its GenAI pages: ours is training.
        kind = {"mlflow.experimentKind": "custom_model_development"}
        return client.create_experiment(name, artifact_location=artifacts, tags=kind)
    except mlflow.exceptions.MlflowException:  # created meanwhile by a parallel job
        return client.get_experiment_by_name(name).experiment_id


def ready_store(uri: str) -> None:
    """Make the store at `uri` ready for a client: an http(s) server must answer
    (check_server); a SQLite store gets its folder and its tables under an exclusive lock on
    <store>.lock beside it, so that processes starting together never migrate it twice."""
    if is_server(uri):
        for name, value in SHORT_RETRIES.items():
            os.environ.setdefault(name, value)
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


def is_server(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def check_server(uri: str) -> None:
    """For an http(s) tracking URI: one request with a short timeout, so that a server that is
    down or unreachable stops the run at once with one line. Any HTTP answer counts (a server
    that wants a login, or puts MLflow under a path without /health, is up)."""
    if not is_server(uri) or uri in _answered:
        return
    reason = unreachable(uri)
    if reason:
        raise TrackingUnreachable(
            f"cannot reach the MLflow tracking server at {uri} ({reason}): start "
            "it, or set MLFLOW_TRACKING_URI (or tracking.uri) to a server that answers; unset "
            "both to record in the local store outputs/mlflow.db"
        )
    _answered.add(uri)


def unreachable(uri: str) -> str | None:
    """Why the tracking server at `uri` does not answer one quick request, or None if it does
    (always None for a store that is not a server)."""
    if not is_server(uri):
        return None
    verify: bool | str = os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH") or True
    if os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() == "true":
        verify = False
    cert = os.environ.get("MLFLOW_TRACKING_CLIENT_CERT_PATH") or None
    try:
        requests.get(
            f"{uri.rstrip('/')}/health", timeout=PROBE_TIMEOUT_S, verify=verify, cert=cert
        ).close()
    except requests.RequestException as err:
        return _short_reason(err)
    return None


def _short_reason(err: Exception) -> str:
    found = re.search(r"\[Errno -?\d+\] ([^'\")]+)", str(err))
    if found:
        return found.group(1).strip()
    if isinstance(err, requests.Timeout):
        return f"no answer within {PROBE_TIMEOUT_S:g} s"
    return type(err).__name__
