"""A checkpoint (trainer.checkpoint) holds all a job needs to go on as if never stopped, and a
run whose heartbeat stopped is marked lost (liveness.py): both in this process, on the digits
and on a real SQLite store."""

import threading
import time

import pytest
import torch
from helpers import SMALL_FF, digits_job
from mlflow.tracking import MlflowClient

from ffbench import experiment, liveness
from ffbench.errors import FFBenchError

OVERRIDES = [*SMALL_FF, "trainer.epochs=4", "trainer.num_threads=1"]


@pytest.mark.parametrize("algo", ["algo=ff", "algo=bp"])
def test_training_continued_from_a_checkpoint_equals_training_straight_through(tmp_path, algo):
    straight = []
    whole = experiment.train(digits_job([*OVERRIDES, algo]), lambda s, m: straight.append(m))

    path = tmp_path / "checkpoint.pt"
    first = digits_job([*OVERRIDES, algo])
    stopped = []

    def stop_after_two(step, metrics):
        stopped.append(metrics)
        if step == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        experiment.train(first, stop_after_two, checkpoint=path)
    second = digits_job([*OVERRIDES, algo])  # a fresh process: new weights, seed reset
    start = experiment.load_checkpoint(path, second)
    assert start["step"] == 2 and start["history"] == stopped
    rest = []
    final = experiment.train(second, lambda s, m: rest.append(m), checkpoint=path, start=start)

    def numbers(history):
        return [{k: v for k, v in m.items() if not k.endswith("_time_s")} for m in history]

    assert numbers(stopped + rest) == numbers(straight)
    for key in ("test_accuracy", "train_accuracy"):
        assert final[key] == whole[key]
    for name, value in second.learner.state_dict().items():
        assert torch.equal(value, torch.load(path)["learner"][name])  # the last pass saved


def test_a_damaged_checkpoint_is_one_line_naming_it(tmp_path):
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(FFBenchError, match=f"cannot continue from {path}.*delete it"):
        experiment.load_checkpoint(path, digits_job(OVERRIDES))


def test_only_runs_whose_heartbeat_stopped_are_marked_lost(tmp_path):
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    eid = client.create_experiment("e")
    now = time.time()
    beats = {"silent": now - 31, "alive": now - 5, "old ffbench": None}
    runs = {}
    for name, last in beats.items():
        tags = {} if last is None else {liveness.BEAT: f"{last:.0f}", liveness.EVERY: "10"}
        runs[name] = client.create_run(eid, tags=tags, run_name=name).info.run_id
    finished = client.create_run(eid, tags=liveness.tags(10)).info.run_id
    client.set_terminated(finished, "FINISHED")

    assert liveness.mark_lost(client, [eid]) == [runs["silent"]]
    lost = client.get_run(runs["silent"])
    assert lost.info.status == "FAILED"
    assert lost.data.tags["ffbench.error"].startswith("process lost: no heartbeat since")
    for name in ("alive", "old ffbench"):
        assert client.get_run(runs[name]).info.status == "RUNNING"
    assert client.get_run(finished).info.status == "FINISHED"


class Beats:
    """A client that records each beat (set_tag) and says when `wanted` have come."""

    def __init__(self, wanted: int):
        self.tags, self.wanted, self.enough = [], wanted, threading.Event()

    def set_tag(self, run_id, key, value):
        self.tags.append((run_id, key, value))
        if len(self.tags) >= self.wanted:
            self.enough.set()


def test_a_heartbeat_beats_until_stopped():
    client = Beats(wanted=3)
    before = time.time()
    with liveness.Heartbeat(client, "run", 0.01) as heartbeat:
        assert client.enough.wait(timeout=60), "fewer than 3 beats"
    assert not heartbeat.thread.is_alive()  # stopped: no more beats can come
    beats = list(client.tags)
    assert len(beats) >= 3 and {key for _, key, _ in beats} == {liveness.BEAT}
    assert {run for run, _, _ in beats} == {"run"}
    after = time.time()
    # each beat carries its time in whole seconds, rounded as the tag writes it
    assert all(int(f"{before:.0f}") <= int(v) <= int(f"{after:.0f}") for _, _, v in beats)
    heartbeat.stop()  # again: nothing changes
    assert client.tags == beats
