"""Plain helpers of both test tiers (fixtures live in conftest.py): build a learner or train
one on the bundled digits with the real config and experiment code; run the installed
`ffbench` command in a scratch directory, read the MLflow store it wrote, serve it with a real
MLflow server and ask that over HTTP; write tiny MNIST files in the real IDX format.

Every learner a test uses is built here (make_trainable, make_learner, digits_job), so that a change to how
learners are constructed touches this file only."""

import atexit
import contextlib
import gzip
import hashlib
import http.server
import io
import json
import logging
import os
import pickle
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import threading
import time
import urllib.parse
import urllib.request
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch

from ffbench import experiment
from ffbench.config import compose, validate
from ffbench.download import IDX_STEMS

REPO = Path(__file__).resolve().parents[1]
TRACKED_FILES = ("git", "-C", str(REPO), "ls-files", "-z")  # the checkout's tracked files
FFBENCH = shutil.which("ffbench", path=str(Path(sys.executable).parent)) or "ffbench"
MLFLOW = shutil.which("mlflow", path=str(Path(sys.executable).parent)) or "mlflow"
CPU = torch.device("cpu")
# Small budgets keep the suite fast; the accuracy tests use the real defaults.
QUICK = ["trainer.epochs=2", "model.width=32", "trainer.num_threads=1"]  # 1 thread: tiny nets
ONE_THREAD = "trainer.num_threads=1"  # a tiny net: more threads than work only adds waiting
SMALL_FF = ["algo=ff", "model.depth=3", "model.width=16"]  # the FF net most unit tests use
# ctypes.util.find_library runs `ldconfig -p` to find a library: ffbench.measure looks up the
# C library that way for malloc_trim. A lookup, not a process a test starts (the unit and app
# tiers allow it).
LIBRARY_LOOKUP = ("/sbin/ldconfig", "-p")


# --- learners, built by the real config and experiment code --------------------------------


def in_a_finalizer(signum: int) -> None:
    """The signal, handled while a weakref finalizer runs: Python drops its exception."""

    class Doomed:
        pass

    doomed = Doomed()
    weakref.finalize(doomed, os.kill, os.getpid(), signum)
    del doomed  # the finalizer runs now


def make_trainable(overrides=(), features=20, image_shape=None, classes=10, seed=0):
    """(learner, optimizer) as `ffbench` would build them with these overrides (checked as it
    checks them), on rows of `features` inputs from images of `image_shape` (default: flat
    rows), on the CPU, with torch's generator seeded first so that the weights are the same
    every time."""
    cfg = compose(overrides)
    validate(cfg)
    torch.manual_seed(seed)
    shape = (features,) if image_shape is None else tuple(image_shape)
    learner = experiment.build_learner(cfg, features, classes, shape, CPU)
    return learner, experiment.make_optimizer(learner.param_groups(), cfg.optimizer)


def make_learner(overrides=(), features=20, image_shape=None, classes=10, seed=0):
    """The learner alone, for tests that do not train it (see make_trainable)."""
    return make_trainable(overrides, features, image_shape, classes, seed)[0]


def digits_job(overrides=()):
    """A job on the bundled digits, prepared as `ffbench` prepares one (torch's process-wide
    settings included), not trained yet."""
    cfg = compose(overrides)
    validate(cfg)
    return experiment.prepare(cfg, CPU)


def train_on_digits(overrides=()) -> dict:
    """Train a job on the bundled digits in this process; its final metrics, and under
    "history" the metrics of every epoch (or layer pass of a sequential schedule)."""
    history = []
    final = experiment.train(digits_job(overrides), lambda step, metrics: history.append(metrics))
    return final | {"history": history}


# --- the installed command and the MLflow store it writes ----------------------------------


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


def ffbench_here(cwd: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """`ffbench ARGS` launched in `cwd`, run by the Hydra app in this process: what the
    installed command runs, without its seconds of imports. Returns a CompletedProcess as
    run_ffbench does (the exit status, what was printed). `env`: variables added to the
    environment, which is cleaned as for run_ffbench.

    What a process keeps to itself is put back afterwards: the directory, sys.argv, the
    environment, the signal handlers, the logging set-up, torch's thread count; and what
    the command registers to run at exit (a sweep's parent closed after a failed job) runs
    when the command ends, as it would in its own process."""
    from ffbench import cli

    saved = _process_state()
    at_exit: list = []
    stdout, stderr = io.StringIO(), io.StringIO()
    code = 0
    try:
        os.chdir(cwd)
        os.environ.clear()
        os.environ.update(clean_env(**(env or {})))
        sys.argv = ["ffbench", *args]
        cli._warn_resume_renamed.cache_clear()  # warned once per process
        atexit.register = lambda function, *a, **k: at_exit.append((function, a, k))
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            try:
                cli.app()
            except SystemExit as stop:
                code = stop.code if isinstance(stop.code, int) else 1
            finally:
                atexit.register = saved["atexit"]
                for function, a, k in reversed(at_exit):
                    function(*a, **k)
    finally:
        _restore(saved)
    return subprocess.CompletedProcess(
        ["ffbench", *args], code, stdout.getvalue(), stderr.getvalue()
    )


def _process_state() -> dict:
    loggers = [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]
    return {
        "cwd": os.getcwd(),
        "argv": sys.argv,
        "environ": dict(os.environ),
        "atexit": atexit.register,
        "signals": {
            s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR2)
        },
        "loggers": {
            logger: (logger.handlers[:], logger.level, logger.propagate, logger.disabled)
            for logger in loggers
            if isinstance(logger, logging.Logger)
        },
        "threads": torch.get_num_threads(),
    }


def _restore(saved: dict) -> None:
    os.chdir(saved["cwd"])
    sys.argv = saved["argv"]
    os.environ.clear()
    os.environ.update(saved["environ"])
    for signum, handler in saved["signals"].items():
        signal.signal(signum, handler)
    for logger in [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]:
        if not isinstance(logger, logging.Logger):
            continue
        handlers, level, propagate, disabled = saved["loggers"].get(logger, ([], 0, True, False))
        for handler in logger.handlers:
            if handler not in handlers:
                handler.close()  # the job's ffbench.log
        logger.handlers[:] = handlers
        logger.level, logger.propagate, logger.disabled = level, propagate, disabled
    torch.set_num_threads(saved["threads"])
    torch.set_flush_denormal(False)


def store(cwd: Path):
    """Client on the default store that a run launched in `cwd` writes."""
    from mlflow.tracking import MlflowClient

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
        # MLflow 3's server also starts 7 job-runner processes (for GenAI features) that no
        # test uses: each imports mlflow, seconds of CPU per server on a 2-core machine
        env=clean_env(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false"),
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


def mlflow_server(
    backend_store_uri: str, *options: str, cwd: Path | None = None, port: int | None = None
):
    """A real `mlflow server` on 127.0.0.1 (one worker) on `port`, else a free one; see
    `serving`."""
    port = port or free_port()
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


# --- data files in the real formats ---------------------------------------------------------


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


# CIFAR-10 in its real python format: pickled dicts, b"data" uint8 (N, 3072) stored as red,
# green and blue planes, b"labels" a list; the class is drawn as a bright red row 2 + 3*label.


def cifar_batch(n: int, rng) -> dict:
    labels = rng.integers(0, 10, n)
    images = rng.integers(0, 80, (n, 3, 32, 32), dtype=np.uint8)
    for i, label in enumerate(labels):
        images[i, 0, 2 + 3 * label, :] = 255
    return {b"data": images.reshape(n, -1), b"labels": labels.tolist()}


def make_cifar(folder: Path, n=40, n_test=40, seed=0) -> dict[str, bytes]:
    """cifar-10-batches-py/ and cifar-10-python.tar.gz in `folder`; returns every member."""
    rng = np.random.default_rng(seed)
    members = {f"data_batch_{i}": pickle.dumps(cifar_batch(n, rng)) for i in range(1, 6)}
    members["test_batch"] = pickle.dumps(cifar_batch(n_test, rng))
    members["batches.meta"] = pickle.dumps({b"label_names": [b"c%d" % i for i in range(10)]})
    (folder / "cifar-10-batches-py").mkdir(parents=True)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, raw in members.items():
            (folder / "cifar-10-batches-py" / name).write_bytes(raw)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    (folder / "cifar-10-python.tar.gz").write_bytes(buffer.getvalue())
    return members


def md5(raw: bytes) -> str:
    return hashlib.md5(raw).hexdigest()


def leftovers(folder: Path) -> list[str]:
    """Every name under `folder`, sorted; [] if it does not exist."""
    return sorted(p.name for p in folder.rglob("*")) if folder.exists() else []


def real_mnist() -> str:
    """$FFBENCH_DATA where it holds the four files of real MNIST (in it or in its mnist/, as
    published or decompressed); the calling test is skipped otherwise."""
    root = os.environ.get("FFBENCH_DATA")
    if not root:
        pytest.skip("FFBENCH_DATA is not set: point it at real MNIST (FFBENCH_DATA=/path/to/mnist)")
    for folder in (Path(root), Path(root) / "mnist"):
        if all(
            (folder / f"{stem}.gz").is_file() or (folder / stem).is_file() for stem in IDX_STEMS
        ):
            return root
    pytest.skip(f"FFBENCH_DATA={root} holds no MNIST files (train-images-idx3-ubyte.gz, ...)")


class Mirror:
    """A data set mirror on 127.0.0.1, served by a thread of this process: it serves `files`
    (name -> bytes); `truncate` names files it cuts off halfway (the connection closes
    mid-file); `hits` counts requests by name. See the `mirror` fixture."""

    def __init__(self):
        self.files, self.truncate, self.hits = {}, set(), []
        mirror = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                name = self.path.rsplit("/", 1)[-1]
                mirror.hits.append(name)
                if name not in mirror.files:
                    self.send_error(404)
                    return
                body = mirror.files[name]
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[: len(body) // 2] if name in mirror.truncate else body)
                self.close_connection = True

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/data/"
        serve = self.server.serve_forever
        threading.Thread(target=serve, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# --- services: a PostgreSQL of the test session's own -------------------------------------


def postgres_bin() -> Path | None:
    """The folder of Debian's PostgreSQL programs (initdb, pg_ctl), the newest version; None
    without the `postgresql` package."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), key=lambda p: p.parts[-3])
    return found[-1].parent if found else None


@contextlib.contextmanager
def postgres(folder: Path):
    """A PostgreSQL server of its own in `folder` on a free port of 127.0.0.1 (trust logins),
    stopped at the end; yields the SQLAlchemy URI of its database `mlflow`. As root it runs as
    the `postgres` user, since PostgreSQL refuses to run as root."""
    programs = postgres_bin()
    assert programs is not None, "no PostgreSQL: apt-get install postgresql"
    as_user: list[str] = []
    if os.geteuid() == 0:
        as_user = ["runuser", "-u", "postgres", "--"]
        shutil.chown(folder, "postgres")
    data, port = folder / "data", free_port()

    def run(*command):
        subprocess.run([*as_user, *command], check=True, capture_output=True, timeout=120)

    run(programs / "initdb", "-D", data, "-U", "postgres", "--auth=trust")
    options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1"
    run(programs / "pg_ctl", "-D", data, "-l", folder / "server.log", "-o", options, "-w", "start")
    try:
        run(programs / "createdb", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "mlflow")
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/mlflow"
    finally:
        run(programs / "pg_ctl", "-D", data, "-m", "fast", "-w", "stop")


def start_ffbench(cwd: Path, *args: str) -> subprocess.Popen:
    """The installed command in the background, in a process group of its own (so that a
    signal reaches it with its children); stderr kept for the failure message."""
    return subprocess.Popen(
        [FFBENCH, *args],
        cwd=cwd,
        env=clean_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def wait_for(condition, process: subprocess.Popen, what: str, timeout: float = 300) -> None:
    """Wait until `condition()` holds, while `process` runs (its stderr if it ends first)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, process.stderr.read()[-3000:]
        assert time.monotonic() < deadline, f"no {what} within {timeout:.0f} s"
        time.sleep(0.05)


def wait_for_epoch(
    process: subprocess.Popen, cwd: Path, epoch: int, logs: str = "outputs/*/*/*/**/ffbench.log"
) -> None:
    """Wait until a job's log (`logs`, under `cwd`) has logged pass `epoch`. The log, not the
    store: a client on a store that ffbench is creating would race it to create the tables."""
    deadline = time.monotonic() + 300
    while not any(f" epoch {epoch} " in log.read_text() for log in cwd.glob(logs)):
        assert process.poll() is None, process.stderr.read()[-3000:]
        assert time.monotonic() < deadline, f"no epoch {epoch} within 300 s"
        time.sleep(0.05)
