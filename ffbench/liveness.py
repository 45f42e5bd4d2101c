"""Runs whose process died without a word (kill -9, out of memory, a lost node) would stay
RUNNING in MLflow forever. A running job, and a sweep's parent, beat: every
tracking.heartbeat_s a thread writes the time into the run's tag `ffbench.heartbeat`. The
writers of the store (the next ffbench on it, a sweep's parent, ffbench-sync) mark a RUNNING
run that has missed LOST_AFTER_BEATS beats FAILED, "process lost": a rerun of its sweep then
trains it again. Readers (ffbench-report) only show it lost (`lost_reason`): reading never
changes a run.
"""

import threading
import time

from mlflow.tracking import MlflowClient

from ffbench.tags import BEAT, ERROR, EVERY, PROCESS

LOST_AFTER_BEATS = 3


def tags(every_s: float) -> dict[str, str]:
    """The tags a run starts with: its first beat, and its interval."""
    return {BEAT: f"{time.time():.0f}", EVERY: f"{every_s:g}"}


class Heartbeat:
    """Beats for run `run_id` from a daemon thread until stopped (a `with` block)."""

    def __init__(self, client: MlflowClient, run_id: str, every_s: float):
        self.client, self.run_id, self.every_s = client, run_id, every_s
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._beat, name="ffbench-heartbeat", daemon=True)

    def _beat(self) -> None:
        while not self.stopped.wait(self.every_s):
            try:
                self.client.set_tag(self.run_id, BEAT, f"{time.time():.0f}")
            except Exception:  # a store that hiccups: the next beat tries again
                pass

    def start(self) -> "Heartbeat":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stopped.set()
        if self.thread.is_alive():
            self.thread.join()

    def __enter__(self) -> "Heartbeat":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def lost_reason(run, now: float | None = None) -> str | None:
    """Why a RUNNING `run` is lost ("process lost: ..."), or None: it beats, it is over, or it
    is a run of an older ffbench (no heartbeat tags) or not ffbench's."""
    last, every = run.data.tags.get(BEAT), run.data.tags.get(EVERY)
    if run.info.status != "RUNNING" or last is None or every is None:
        return None
    if (time.time() if now is None else now) - float(last) <= LOST_AFTER_BEATS * float(every):
        return None
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(last)))
    where = run.data.tags.get(PROCESS, "?")
    return f"process lost: no heartbeat since {since} from {where}"


def mark_lost(client: MlflowClient, experiment_ids: list[str]) -> list[str]:
    """Mark FAILED the RUNNING runs of these experiments whose heartbeat stopped; their ids.
    For the writers of the store only."""
    running = client.search_runs(experiment_ids, "attributes.status = 'RUNNING'")
    now, lost = time.time(), []
    for run in running:
        message = lost_reason(run, now)
        if message is not None:
            client.set_tag(run.info.run_id, ERROR, message)
            client.set_terminated(run.info.run_id, "FAILED")
            lost.append(run.info.run_id)
    return lost
