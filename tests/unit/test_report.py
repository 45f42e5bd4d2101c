"""Closing a sweep's parent run: a comparison report that fails is logged as a warning and
leaves the sweep's status alone. Reports of real sweeps are in tests/e2e/test_report.py."""

from mlflow.tracking import MlflowClient

from ffbench import compare, liveness
from ffbench.sweep import SweepRun


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
    closing.ui_url, closing.offline_wait_s = "http://127.0.0.1:5000", 0.0
    closing.heartbeat = liveness.Heartbeat(client, parent.info.run_id, 60).start()
    closing._close()
    assert not closing.heartbeat.thread.is_alive()
    assert client.get_run(parent.info.run_id).info.status == "FINISHED"
    assert "no comparison report: no picture today" in caplog.text
