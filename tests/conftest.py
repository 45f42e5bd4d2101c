"""Shared helpers: run the installed `ffbench` command in a scratch directory, read the
MLflow store it wrote, serve it with a real MLflow server and ask that over HTTP, and write
tiny MNIST files in the real IDX format."""

import contextlib
import gzip
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

FFBENCH = shutil.which("ffbench", path=str(Path(sys.executable).parent)) or "ffbench"
MLFLOW = shutil.which("mlflow", path=str(Path(sys.executable).parent)) or "mlflow"
# Small budgets keep the suite fast; the accuracy tests use the real defaults.
QUICK = ["trainer.epochs=2", "model.width=32", "trainer.num_threads=1"]  # 1 thread: tiny nets


def clean_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "FFBENCH_"))}
    env["PYTHONUNBUFFERED"] = "1"
    return env | extra


def run_ffbench(cwd: Path, *args: str, env: dict | None = None, timeout: float = 300, exe=FFBENCH):
    """Run the installed command; returns the CompletedProcess (stdout and stderr as text)."""
    return subprocess.run(
        [exe, *args],
        cwd=cwd,
        env=env or clean_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def store(cwd: Path) -> MlflowClient:
    """Client on the default store that a run launched in `cwd` writes."""
    return MlflowClient(f"sqlite:///{cwd / 'outputs' / 'mlflow.db'}")


def all_runs(cwd: Path):
    db = cwd / "outputs" / "mlflow.db"
    if not db.exists():
        return []
    client = store(cwd)
    ids = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(ids) if ids else []


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def serving(command: list, port: int, cwd: Path | None = None, timeout: float = 120):
    """Start `command`, a server listening on 127.0.0.1:`port`, and yield its base URL once
    GET /health answers; the server's whole process group is stopped at the end, whatever
    happened."""
    server = subprocess.Popen(
        [str(part) for part in command],
        cwd=cwd,
        env=clean_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # so that its workers (or make's child) are stopped with it
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=5):
                    break
            except OSError:
                assert server.poll() is None, f"{command[0]} exited"
                assert time.monotonic() < deadline, f"no answer on {url} within {timeout} s"
                time.sleep(0.5)
        yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:  # it waits for idle keep-alive connections: no need to let it
            server.wait(timeout=3)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


def mlflow_server(backend_store_uri: str, *options: str, cwd: Path | None = None):
    """A real `mlflow server` on 127.0.0.1 (one worker) on a free port; see `serving`."""
    port = free_port()
    command = [MLFLOW, "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    command += ["--backend-store-uri", backend_store_uri, *options]
    return serving(command, port, cwd)


def rest(url: str, endpoint: str, body: dict | None = None, **query) -> dict:
    """One call to the MLflow REST API of the server at `url`: GET with `query`, or POST
    `body` as JSON; returns the decoded answer."""
    address = f"{url}/api/2.0/mlflow/{endpoint}"
    if query:
        address += "?" + urllib.parse.urlencode(query)
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(address, data, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as answer:
        return json.load(answer)


@pytest.fixture
def workdir(tmp_path) -> Path:
    """An empty launch directory, far from the repository."""
    path = tmp_path / "launch"
    path.mkdir()
    return path


def write_idx(path: Path, array: np.ndarray, compress: bool = True) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(n).to_bytes(4, "big") for n in array.shape
    )
    data = header + array.astype(np.uint8).tobytes()
    if compress:
        with gzip.open(path.with_name(path.name + ".gz"), "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)


def make_mnist(folder: Path, n_train=300, n_test=100, compress=True, seed=0) -> Path:
    """Tiny MNIST-format files whose digit is drawn as a bright horizontal bar at row 4 + 2*label."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for stem, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.integers(0, 10, n)
        images = rng.integers(0, 60, (n, 28, 28))
        for i, label in enumerate(labels):
            images[i, 4 + 2 * label, 4:24] = 255
        write_idx(folder / f"{stem}-images-idx3-ubyte", images, compress)
        write_idx(folder / f"{stem}-labels-idx1-ubyte", labels, compress)
    return folder


def write_md5sums(folder: Path, out: Path) -> str:
    """`md5sum`-format checksums of the files in `folder`, written to `out` (for
    dataset.checksums: generated files cannot match the real data sets' checksums)."""
    lines = [
        f"{hashlib.md5(p.read_bytes()).hexdigest()}  {p.name}\n"
        for p in sorted(folder.iterdir())
        if p.is_file()
    ]
    out.write_text("".join(lines))
    return "".join(lines)


@pytest.fixture
def mnist_dir(tmp_path) -> Path:
    return make_mnist(tmp_path / "mnist")


def make_algorithm(features=20, overrides=()):
    """A learner on `features` inputs, built by the real config and experiment code."""
    import torch

    from ffbench import experiment

    cfg = experiment.compose_config(overrides)
    torch.manual_seed(0)
    return experiment.build_algorithm(cfg, features, 10, (features,), torch.device("cpu"))


def make_ff(depth=3, width=16, features=20, overrides=()):
    """A small FF net, built like `ffbench algo=ff` builds one."""
    return make_algorithm(
        features, ["algo=ff", f"model.depth={depth}", f"model.width={width}", *overrides]
    )
