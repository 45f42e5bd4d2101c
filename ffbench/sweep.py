"""The parent MLflow run of a sweep: a Hydra callback (conf/config.yaml,
hydra.callbacks.mlflow_sweep) that opens it before the first job, once every job has passed
its checks, and closes it after the last one, with the comparison report of its jobs, FINISHED
only if every job was, and prints the links that open the sweep in the MLflow UI."""

import atexit
import logging
import os
import sys
import time
from pathlib import Path

from hydra.experimental.callback import Callback

from ffbench import compare, liveness, preflight, store, ui
from ffbench.tags import GIT_COMMIT, JOBS_PLANNED, OVERRIDES, SWEEP_DIR
from ffbench.tracking import PARENT_ENV, git_commit

# In a sweep folder: the parent run id that the launching process could not close (its
# server was away); ffbench-sync closes that parent even before its heartbeat goes stale.
UNCLOSED = "mlflow-parent-unclosed"


class SweepRun(Callback):
    """Hydra callback: a parent MLflow run around a multirun, FINISHED only if every job was."""

    def on_multirun_start(self, config, **kwargs) -> None:
        launch_dir = config.hydra.runtime.cwd
        try:  # every job composes and the server answers, or nothing is written
            jobs = preflight.check_sweep(config)  # [] for sweepers that choose as they go
            self.client = store.connect(config.tracking, launch_dir)
        except Exception as err:  # Hydra would only warn about a callback's error, and go on
            preflight.exit_with(err)
        sweep_dir = Path(config.hydra.sweep.dir)
        self.sweep_dir = sweep_dir.resolve()
        self.ui_url = ui.base_url(config.tracking.ui_url, self.client.tracking_uri)
        experiment_id = store.experiment_id(self.client, config.tracking, launch_dir)
        liveness.mark_lost(self.client, [experiment_id])
        planned = {JOBS_PLANNED: str(len(jobs))} if jobs else {}
        run = self.client.create_run(
            experiment_id,
            run_name=f"sweep-{sweep_dir.parent.name}-{sweep_dir.name}",
            tags={
                SWEEP_DIR: str(sweep_dir.resolve()),
                OVERRIDES: " ".join(config.hydra.overrides.task),
                GIT_COMMIT: git_commit(),
                **liveness.tags(config.tracking.heartbeat_s),
                **planned,
            },
        )
        self.run_id = run.info.run_id
        self.offline_wait_s = config.tracking.offline_wait_s
        every = config.tracking.heartbeat_s
        self.heartbeat = liveness.Heartbeat(self.client, self.run_id, every).start()
        # The jobs find their parent here (tracking.job_run), also in other processes.
        os.environ[PARENT_ENV] = self.run_id
        # A failing job makes Hydra raise before on_multirun_end: close the parent at exit.
        atexit.register(self._close, at_exit=True)
        self.done = False

    def __getstate__(self) -> dict:
        """What a copy of the callback holds (joblib's workers get one): not the heartbeat's
        thread, which beats in this process only."""
        return {k: v for k, v in vars(self).items() if k != "heartbeat"}

    def on_multirun_end(self, config, **kwargs) -> None:
        self._close()

    def _close(self, at_exit: bool = False) -> None:
        """Close the parent, waiting up to tracking.offline_wait_s for a server that went
        away; one that does not come back leaves it for `ffbench-sync SWEEP_DIR`, with one
        line, and exit status 1 (at exit, a job has failed already: the status is 1)."""
        if self.done:
            return
        self.done = True
        self.heartbeat.stop()
        os.environ.pop(PARENT_ENV, None)
        waited = time.time()
        while True:
            try:
                closed = close_parent(self.client, self.run_id, self.sweep_dir)
                break
            except Exception:
                reason = store.unreachable(self.client.tracking_uri)
                if not reason:
                    raise
                if time.time() - waited >= self.offline_wait_s:
                    (self.sweep_dir / UNCLOSED).write_text(f"{self.run_id}\n")
                    print(
                        f"ffbench: error: the sweep's parent run {self.run_id} is not closed: "
                        f"the tracking server at {self.client.tracking_uri} does not answer "
                        f"({reason}); once it is back, run `ffbench-sync {self.sweep_dir}`",
                        file=sys.stderr,
                    )
                    if not at_exit:  # SystemExit in an atexit handler prints a traceback
                        sys.exit(1)
                    return
                time.sleep(2.0)
        if closed is None:  # closed before
            return
        try:
            self._print_links([child.info.run_id for child in closed])
        except Exception as err:  # the sweep is recorded; a link is not worth failing it
            logging.getLogger("ffbench").warning("no MLflow UI links: %s", err)

    def _print_links(self, job_ids: list[str]) -> None:
        parent = self.client.get_run(self.run_id)
        links = ui.sweep_links(self.client, parent, job_ids, self.ui_url)
        print(ui.links_text(links, self.client.tracking_uri), flush=True)


def close_parent(client, run_id: str, sweep_dir: Path, again: bool = False):
    """Count the sweep's jobs into its parent run (metrics jobs_finished, jobs_failed,
    jobs_killed, and jobs_missing: planned jobs that left no run, such as one a scheduler
    killed as it started), write the comparison report, and end it FINISHED if every planned
    job was, else FAILED; returns the jobs, or None if the parent was closed already. `again`
    (ffbench-sync): recount a closed parent, changing it only if a count or its status
    changed."""
    parent = client.get_run(run_id)
    if parent.info.status != "RUNNING" and not again:
        return None
    children = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{run_id}'",
        max_results=50000,
    )
    statuses = [child.info.status for child in children]
    counts = {f"jobs_{s.lower()}": statuses.count(s) for s in ("FINISHED", "FAILED", "KILLED")}
    if JOBS_PLANNED in parent.data.tags:
        counts["jobs_missing"] = max(0, int(parent.data.tags[JOBS_PLANNED]) - len(children))
    ok = bool(statuses) and all(s == "FINISHED" for s in statuses)
    ok = ok and not counts.get("jobs_missing")
    status = "FINISHED" if ok else "FAILED"
    known = {k: parent.data.metrics.get(k) for k in counts}
    if again and known == counts and parent.info.status == status:
        return None
    for key, count in counts.items():
        client.log_metric(run_id, key, count)
    try:  # the comparison table and pictures, into the sweep folder and the parent run
        for path in compare.report(children, client, sweep_dir):
            client.log_artifact(run_id, str(path))
    except Exception as err:  # a picture is not worth losing the sweep's status over
        logging.getLogger("ffbench").warning("no comparison report: %s", err)
    client.set_terminated(run_id, status)
    return children
