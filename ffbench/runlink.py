"""The link of a job's run to its store: every record is journaled first (journal.py), then
sent if the store is online.

A tracking server that stops answering does not stop the job: the link goes offline,
recording to the journal only, and asks the server again every RECONNECT_EVERY_S; once it
answers, the journal is replayed (what the store lacks is added) and the link is online again.
At the run's end, a link still offline waits tracking.offline_wait_s for the server, then
raises TrackingOffline, which names the folder to give `ffbench-sync`.
"""

import logging
import time
from collections.abc import Callable
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient

from ffbench import journal, liveness, store
from ffbench.errors import FFBenchError

log = logging.getLogger("ffbench")


class TrackingOffline(FFBenchError):
    """A job ended while its tracking server was away: its journal holds the run."""


class RunLink:
    """One run's journal and its connection to the store. `on_online` is called after every
    replay that brought the store up to date (the run's id is known then)."""

    RECONNECT_EVERY_S = 10.0

    def __init__(self, cfg, launch_dir: str, folder: Path, on_online: Callable[[], None]):
        self.cfg = cfg  # the TrackingConfig
        self.launch_dir = launch_dir
        self.uri = store.tracking_uri(cfg, launch_dir)
        self.folder = folder
        self.journal = journal.Journal(fresh_journal(folder))
        self.on_online = on_online
        self.client: MlflowClient | None = None
        self.run_id: str | None = None
        self.online = False
        self.tried_at = 0.0  # when the server was last asked for, while offline
        self.ending = False  # the run's end is journaled: no live signs any more

    def open(self, start: dict, params: dict, may_start_offline: bool) -> None:
        """Journal the run's start and params, then create (or reopen) it in the store. With
        `may_start_offline` (a sweep's job: the server answered when the sweep began) a server
        that is away leaves the run offline; else its error is raised."""
        if not may_start_offline:
            store.check_server(self.uri)  # before anything is journaled
        self.journal.append("start", **start)
        if params:
            self.journal.append("params", params=params)
        try:
            self.client = store.connect(self.cfg, self.launch_dir)
            experiment = store.experiment_named(self.client, start["experiment"], self.launch_dir)
            liveness.mark_lost(self.client, [experiment])
            self._replay()
        except Exception as err:
            if not may_start_offline:
                raise
            self._went_offline(err)

    def _replay(self) -> None:
        """Bring the store up to date with the journal, then send live."""

        def experiment_id(name: str) -> str:
            return store.experiment_named(self.client, name, self.launch_dir)

        done = journal.replay(self.client, self.journal, experiment_id, live=not self.ending)
        self.run_id, self.online = done.run_id, True
        self.on_online()

    def _went_offline(self, err: BaseException) -> None:
        """Go on offline if the store is a server that no longer answers; else raise `err`."""
        if self.client is None:  # it never connected: the client for later
            self.client = MlflowClient(self.uri)
            mlflow.set_tracking_uri(self.uri)
        reason = store.unreachable(self.uri)
        if not reason:  # a store that answers and refuses: a real error
            raise err
        if self.online or self.tried_at == 0.0:
            log.warning(
                "the tracking server at %s does not answer (%s): recording to %s, trying again "
                "every %g s",
                self.uri,
                reason,
                self.journal.path,
                self.RECONNECT_EVERY_S,
            )
        self.online, self.tried_at = False, time.time()

    def reconnect(self) -> bool:
        """Ask the server again (at most every RECONNECT_EVERY_S); True once online."""
        if self.online:
            return True
        if time.time() - self.tried_at < self.RECONNECT_EVERY_S:
            return False
        self.tried_at = time.time()
        if store.unreachable(self.uri):
            return False
        try:
            self._replay()
        except Exception as err:
            self._went_offline(err)
            return False
        log.warning(
            "the tracking server at %s is back: run %s is up to date", self.uri, self.run_id
        )
        return True

    def record(self, op: str, tries: int = 1, **fields) -> None:
        """Journal one record, then send it."""
        self.send(self.journal.append(op, **fields), tries)

    def send(self, record: dict, tries: int = 1) -> None:
        """Send a journaled record if online. Offline, ask the server again: the replay of a
        reconnection sends every record, this one too. `tries`: sends before going offline."""
        if not self.online:
            self.reconnect()
            return
        for attempt in range(tries):
            try:
                journal.send(self.client, self.run_id, record)
                return
            except Exception as err:
                if attempt == tries - 1:
                    self._went_offline(err)

    def close(self, name: str) -> None:
        """After the run's end is journaled: wait up to tracking.offline_wait_s for a server
        that is away, then raise TrackingOffline naming run `name`'s folder."""
        self.journal.sync_to_disk()
        deadline = time.time() + self.cfg.offline_wait_s
        while not self.online:
            self.tried_at = 0.0  # ask now, not RECONNECT_EVERY_S after the last time
            if self.reconnect() or time.time() >= deadline:
                break
            time.sleep(min(1.0, max(0.0, deadline - time.time())))
        self.journal.close()
        if not self.online:
            raise TrackingOffline(
                f"the MLflow tracking server at {self.uri} did not come back within "
                f"{self.cfg.offline_wait_s:g} s: run {name} is recorded in "
                f"{self.folder}; once the server is back, run `ffbench-sync {self.folder}`"
            )


def fresh_journal(folder: Path) -> Path:
    """The journal file for a new run in `folder`; an earlier run's journal there (a job
    folder used twice) is kept under a numbered name, which ffbench-sync also reads."""
    path = folder / journal.NAME
    if path.exists():
        n = 1
        while path.with_suffix(f".{n}.jsonl").exists():
            n += 1
        path.rename(path.with_suffix(f".{n}.jsonl"))
    return path
