"""A job's journal (journal.py) replayed into real SQLite stores: the run is created once or
found again, only what the store lacks is added, a second replay adds nothing, and the
histories in the store equal the journal's."""

import numpy as np
import pytest
from mlflow.data import from_numpy
from mlflow.tracking import MlflowClient

from ffbench import journal

EPOCHS = 6


def write_job(folder, uri, status="FINISHED", epochs=EPOCHS):
    """The journal a job of `epochs` passes writes; returns it."""
    log = journal.Journal(folder / journal.NAME)
    start = journal.start_record(uri, "ffbench", "ff-sumsq-relu-digits", {"algo": "ff"}, None, None)
    log.append("start", **start)
    log.append("params", params={"trainer.epochs": str(epochs), "algo": "ff"})
    data = from_numpy(np.arange(12.0).reshape(4, 3), targets=np.arange(4), name="digits")
    log.append("inputs", datasets=journal.dataset_rows([(data._to_mlflow_entity(), "training")]))
    for step in range(1, epochs + 1):
        metrics = {"train_loss": 1.0 / step, "val_accuracy": 0.5 + step / 100}
        log.append("metrics", metrics=journal.metric_rows(metrics, step, 1000 + step))
    log.append("tags", tags={"ffbench.peak_rss_method": "vmhwm"})
    (folder / "config.yaml").write_text("algo: ff\n")
    log.append("files", path=str(folder / "config.yaml"), dest="config")
    log.append("text", text="hello", file="note.txt")
    if status:
        log.append("metrics", metrics=journal.metric_rows({"test_accuracy": 0.93}, epochs, 5000))
        log.append("end", status=status, time=6000)
    log.close()
    return log


def replay(log, uri, **kwargs):
    client = MlflowClient(uri)

    def experiment_id(name):
        found = client.get_experiment_by_name(name)
        return found.experiment_id if found else client.create_experiment(name)

    return journal.replay(client, log, experiment_id, **kwargs), client


def history(client, run_id, key):
    return [(m.step, m.timestamp, m.value) for m in client.get_metric_history(run_id, key)]


def journaled(log, key):
    rows = [row for r in log.records() if r["op"] == "metrics" for row in r["metrics"]]
    return [(step, ts, value) for k, value, ts, step in rows if k == key]


@pytest.fixture
def store_uri(tmp_path):
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def test_a_journal_replayed_twice_makes_one_complete_run(tmp_path, store_uri):
    log = write_job(tmp_path, store_uri)
    first, client = replay(log, store_uri)
    assert first.created and first.params == 2 and first.metrics == 2 * EPOCHS + 1
    assert first.inputs == 1 and first.files == 2 and first.status == "FINISHED"
    run = client.get_run(first.run_id)
    assert run.info.status == "FINISHED" and run.info.end_time == 6000
    assert run.info.run_name == "ff-sumsq-relu-digits"
    assert run.data.params == {"trainer.epochs": str(EPOCHS), "algo": "ff"}
    assert run.data.tags["ffbench.peak_rss_method"] == "vmhwm"
    assert run.data.tags[journal.JOURNAL_ID] == log.records()[0]["journal_id"]
    for key in ("train_loss", "val_accuracy", "test_accuracy"):
        assert history(client, first.run_id, key) == journaled(log, key)
    names = {a.path for a in client.list_artifacts(first.run_id)}
    assert names == {"config", "note.txt"}
    [dataset] = run.inputs.dataset_inputs
    assert dataset.dataset.name == "digits"

    second, _ = replay(log, store_uri)
    assert second.run_id == first.run_id and second.added == 0 and second.status is None
    assert len(client.search_runs([run.info.experiment_id])) == 1
    assert history(client, first.run_id, "train_loss") == journaled(log, "train_loss")
    assert len(client.get_run(first.run_id).inputs.dataset_inputs) == 1


def test_a_run_sent_in_part_gets_only_what_it_lacks_and_keeps_its_id(tmp_path, store_uri):
    client = MlflowClient(store_uri)
    experiment = client.create_experiment("ffbench")
    run_id = client.create_run(experiment).info.run_id
    log = write_job(tmp_path, store_uri)
    log.append("created", run_id=run_id, uri=store_uri)  # the job had created it live
    log.close()
    metrics = [r for r in log.records() if r["op"] == "metrics"]
    for record in metrics[:3]:  # what reached the server before it went away
        journal.send(client, run_id, record)

    done, _ = replay(log, store_uri)
    assert done.run_id == run_id and not done.created
    assert done.metrics == 2 * (EPOCHS - 3) + 1
    assert history(client, run_id, "train_loss") == journaled(log, "train_loss")
    assert len(client.search_runs([experiment])) == 1


def test_a_run_marked_lost_while_its_job_was_offline_ends_as_the_job_ended(tmp_path, store_uri):
    log = write_job(tmp_path, store_uri, status=None)  # the job has not ended yet
    done, client = replay(log, store_uri)
    client.set_tag(done.run_id, journal.ERROR, "process lost: no heartbeat since ...")
    client.set_terminated(done.run_id, "FAILED")

    replay(log, store_uri)  # a sync while the job may still run changes no status
    assert client.get_run(done.run_id).info.status == "FAILED"

    again, _ = replay(log, store_uri, live=True)  # the job itself, back online
    run = client.get_run(done.run_id)
    assert again.status == "RUNNING" and run.info.status == "RUNNING"
    assert journal.ERROR not in run.data.tags

    log.append("end", status="FINISHED", time=7000)
    log.close()
    replay(log, store_uri)
    assert client.get_run(done.run_id).info.status == "FINISHED"


def test_a_line_cut_short_by_a_kill_is_left_out(tmp_path, store_uri):
    log = write_job(tmp_path, store_uri)
    with open(log.path, "a") as file:
        file.write('{"op": "metrics", "metrics": [["train_lo')
    done, client = replay(log, store_uri)
    assert history(client, done.run_id, "train_loss") == journaled(log, "train_loss")
    assert len(journaled(log, "train_loss")) == EPOCHS


def test_an_older_journal_never_undoes_the_job_that_continued_its_run(tmp_path, store_uri):
    first_folder, second_folder = tmp_path / "killed", tmp_path / "continued"
    first = write_job(first_folder, store_uri, status="KILLED", epochs=3)
    done, client = replay(first, store_uri)
    second = journal.Journal(second_folder / journal.NAME)  # a rerun resumed from the checkpoint
    start = journal.start_record(store_uri, "ffbench", "x", {"algo": "ff"}, None, done.run_id)
    assert start["journal_id"] > first.records()[0]["journal_id"]
    second.append("start", **start)
    second.append("metrics", metrics=journal.metric_rows({"train_loss": 0.1}, 4, 9000))
    second.append("end", status="FINISHED", time=9500)
    second.close()
    again, _ = replay(second, store_uri)
    assert again.run_id == done.run_id and again.status == "FINISHED"

    stale, _ = replay(first, store_uri)  # e.g. a sync of every folder under outputs/
    assert stale.added == 0 and stale.notes
    run = client.get_run(done.run_id)
    assert run.info.status == "FINISHED" and run.info.end_time == 9500
    assert len(client.search_runs([run.info.experiment_id])) == 1
