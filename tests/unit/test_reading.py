"""Reading never changes a run: `ffbench-report` and `make ui`'s links (python -m ffbench.ui)
leave a RUNNING run whose heartbeat stopped RUNNING in the store; the report shows it lost.
The writers mark it FAILED (liveness.mark_lost: tests/unit/test_checkpoint.py)."""

import time

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from ffbench import compare, liveness, ui


@pytest.fixture
def stale_store(tmp_path):
    """A store whose experiment "reading" holds a finished run and one whose process died
    (its last beat 4 intervals ago); (uri, the silent run's id)."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    eid = client.create_experiment("reading", artifact_location=str(tmp_path / "artifacts"))
    finished = client.create_run(eid, tags={"ffbench.overrides": "algo=ff"}).info.run_id
    client.log_param(finished, "algo", "ff")
    client.log_metric(finished, "test_accuracy", 0.9, step=1)
    client.log_metric(finished, "val_accuracy", 0.9, step=1)
    client.set_terminated(finished, "FINISHED")
    every = 10.0
    last = time.time() - (liveness.LOST_AFTER_BEATS + 1) * every
    beats = {liveness.BEAT: f"{last:.0f}", liveness.EVERY: f"{every:g}"}
    silent = client.create_run(eid, tags={"ffbench.overrides": "algo=bp", **beats}).info.run_id
    client.log_param(silent, "algo", "bp")
    tracking = mlflow.get_tracking_uri()
    yield uri, silent
    mlflow.set_tracking_uri(tracking)  # compare.load sets the process's tracking URI


def test_the_report_shows_a_lost_run_and_leaves_it_running(stale_store, tmp_path, capsys):
    uri, silent = stale_store
    compare.main(["--tracking-uri", uri, "--experiment", "reading", "--out", str(tmp_path)])
    run = MlflowClient(uri).get_run(silent)
    assert run.info.status == "RUNNING"
    assert "ffbench.error" not in run.data.tags
    table = (tmp_path / compare.TABLE_FILE).read_text()
    [row] = [line for line in table.splitlines() if "algo=bp" in line]
    assert "RUNNING, lost" in row and "process lost: no heartbeat since" in row


def test_the_ui_links_leave_a_lost_run_running(stale_store, capsys):
    uri, silent = stale_store
    ui.main([uri])
    assert "experiment 'reading'" in capsys.readouterr().out
    run = MlflowClient(uri).get_run(silent)
    assert run.info.status == "RUNNING" and "ffbench.error" not in run.data.tags
