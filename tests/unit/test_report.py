"""Closing a sweep's parent run: a comparison report that fails is logged as a warning and
leaves the sweep's status alone. Reports of real sweeps are in tests/e2e/test_report.py."""

from mlflow.tracking import MlflowClient

from ffbench import compare, liveness, sweep
from ffbench.sweep import SweepRun
from ffbench.tags import JOBS_PLANNED


def test_a_failing_report_leaves_the_sweep_status_alone(tmp_path, monkeypatch, caplog):
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.create_experiment("closing")
    parent = client.create_run(experiment)
    job = client.create_run(experiment, tags={"mlflow.parentRunId": parent.info.run_id})
    client.set_terminated(job.info.run_id, "FINISHED")

    def broken(*args):
        raise RuntimeError("no picture today")

    monkeypatch.setattr(compare, "report", broken)
    closing = SweepRun()
    closing.client, closing.run_id, closing.sweep_dir = client, parent.info.run_id, tmp_path
    closing.ui_url, closing.offline_wait_s, closing.done = "http://127.0.0.1:5000", 0.0, False
    closing.heartbeat = liveness.Heartbeat(client, parent.info.run_id, 60).start()
    closing._close()
    assert not closing.heartbeat.thread.is_alive()
    assert client.get_run(parent.info.run_id).info.status == "FINISHED"
    assert "no comparison report: no picture today" in caplog.text


def test_a_planned_job_that_left_no_run_fails_the_sweep(tmp_path, monkeypatch):
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.create_experiment("closing")
    parent = client.create_run(experiment, tags={JOBS_PLANNED: "3"}).info.run_id
    for _ in range(2):  # the third job was killed before it could open its run
        job = client.create_run(experiment, tags={"mlflow.parentRunId": parent})
        client.set_terminated(job.info.run_id, "FINISHED")
    monkeypatch.setattr(compare, "report", lambda *args: [])
    assert len(sweep.close_parent(client, parent, tmp_path)) == 2
    closed = client.get_run(parent)
    assert closed.info.status == "FAILED"
    assert closed.data.metrics == {
        "jobs_finished": 2,
        "jobs_failed": 0,
        "jobs_killed": 0,
        "jobs_missing": 1,
    }
    assert sweep.close_parent(client, parent, tmp_path) is None  # closed: nothing again
    assert sweep.close_parent(client, parent, tmp_path, again=True) is None  # no change
