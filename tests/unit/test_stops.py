"""A stop is acted on at the next training step or evaluation chunk at the latest
(ffbench/stops.py), counted in steps, never timed: a real signal sent to this process at every
point of a short training on the bundled digits (every layer's forward call, in training steps
and in evaluation; with measure.memory on, every release in the saved-tensor meter) never lets
more than one optimizer step run after it, and one sent during evaluation lets no further
chunk start.

Every way a stop arrives: SIGTERM whose KeyboardInterrupt unwinds at once; one raised while a
weakref finalizer runs, which Python prints and drops (the meter's own finalizers, and one made
for the purpose); SLURM's time-limit warning (SIGUSR2), whose handler, installed before
ffbench's as submitit's is, runs at the next step. What the installed command records when
stopped is in tests/e2e/test_failures.py, and on a SLURM cluster in tests/e2e/test_slurm.py."""

import contextlib
import copy
import os
import signal
import sys

import pytest
import torch
from helpers import CPU, digits_job, in_a_finalizer
from torch import nn

from ffbench import experiment, stops
from ffbench.measure import PeakMemory

# Two passes of 4 steps (1257 training digits, 400 at a time), evaluated after each.
SHORT = ["trainer.epochs=2", "trainer.batch_size=400", "trainer.num_threads=1"]
NETS = {
    "ff": ["algo=ff", "model.depth=2", "model.width=16"],  # read-out and goodness evaluations
    "ff_sequential": ["algo=ff", "model.depth=2", "model.width=16", "algo.schedule=sequential"],
    "bp": ["algo=bp", "model.depth=2", "model.width=16"],
}
# The KeyboardInterrupt of a stop sent inside a finalizer is printed and dropped by Python, and
# reported by pytest as a warning: that is the case under test.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR2)


@pytest.fixture(autouse=True)
def own_handlers(monkeypatch):
    """This process's signal handlers and stops' state are given back after each test."""
    saved = {signum: signal.getsignal(signum) for signum in SIGNALS}
    monkeypatch.setattr(stops, "_pending", None)
    monkeypatch.setattr(stops, "_deferred", {})
    yield
    for signum, handler in saved.items():
        signal.signal(signum, handler)


def at_once(signum: int) -> None:
    """The signal, handled in ordinary code: its KeyboardInterrupt unwinds from here."""
    os.kill(os.getpid(), signum)


class Submitit:
    """A handler of SLURM's warning set before ffbench's, as submitit's is: it requeues the job
    and exits (SystemExit). It records the frame it was given (None when stops.check() runs
    it, a frame when Python's signal machinery does) and the steps done by then."""

    def __init__(self, training):
        self.training, self.calls = training, []

    def __call__(self, signum, frame):
        self.calls.append((signum, frame, self.training.steps))
        sys.exit(-1)


class Training:
    """A short training of `net` on the digits, run again and again from the same start, that
    sends a stop at its `at`-th point and counts the optimizer steps. The points are the forward
    calls of the learner's layers, in training steps and in evaluation, or with `meter` the
    releases of the saved-tensor meter (measure.memory), which run as weakref finalizers."""

    def __init__(self, net: str, meter: bool = False):
        self.job = digits_job([*NETS[net], *SHORT])
        learner, optimizer = self.job.learner, self.job.optimizer
        self.start = copy.deepcopy((learner.state_dict(), optimizer.state_dict()))
        optimizer.register_step_post_hook(self._stepped)
        self.memory = None
        if meter:
            self.memory = PeakMemory(CPU, learner.parameters())
            release = self.memory.saved._release

            def releasing(key):
                release(key)
                self._point()

            self.memory.saved._release = releasing
        else:
            for module in learner.modules():
                if isinstance(module, nn.Linear):
                    module.register_forward_pre_hook(lambda *args: self._point())
        self.at = 0
        self.run(0, at_once)
        self.points, self.total = self.count, self.steps
        assert self.total == 8 * (1 + (net == "ff_sequential")) and self.points > self.total

    def _stepped(self, *args):
        self.steps += 1

    def _point(self):
        self.count += 1
        if self.count == self.at:
            self.sent_at = self.steps
            self.send(self.signum)

    def run(self, at: int, send, signum=signal.SIGTERM) -> tuple | None:
        """Train from the start, sending `signum` by `send` at the `at`-th point (0: never);
        returns what ended training early, as (type, message), or None."""
        learner, optimizer = self.job.learner, self.job.optimizer
        learner.load_state_dict(self.start[0])
        optimizer.load_state_dict(self.start[1])
        torch.manual_seed(0)
        self.at, self.send, self.signum = at, send, signum
        self.count, self.steps, self.sent_at = 0, 0, None
        stops.install()  # as `ffbench` does at each job's start
        try:
            experiment.train(self.job, lambda step, metrics: None, self.memory)
        except (KeyboardInterrupt, SystemExit) as err:  # kept without its frames and graphs
            return type(err), str(err)
        return None


def assert_stopped_at_every_point(training: Training, send):
    """SIGTERM, sent at each point in turn, lets at most one step run after it, and ends the
    training wherever a step was left to run."""
    for at in range(1, training.points + 1):
        ended = training.run(at, send)
        after = training.steps - training.sent_at
        assert after <= 1, f"{after} steps ran after a stop at point {at}"
        if training.sent_at < training.total:
            assert ended == (KeyboardInterrupt, "stopped by signal SIGTERM"), at


def test_a_stop_dropped_in_a_finalizer_is_raised_by_the_next_check_once():
    stops.install()
    in_a_finalizer(signal.SIGTERM)  # nothing raised here: Python printed and dropped it
    with pytest.raises(KeyboardInterrupt, match="stopped by signal SIGTERM"):
        stops.check()
    stops.check()


@pytest.mark.parametrize("net", NETS)
def test_a_stop_dropped_in_a_finalizer_anywhere_lets_at_most_one_step_run(net):
    assert_stopped_at_every_point(Training(net), in_a_finalizer)


@pytest.mark.parametrize("net", ["ff", "bp"])
def test_a_stop_raised_at_once_anywhere_lets_at_most_one_step_run(net):
    assert_stopped_at_every_point(Training(net), at_once)


@pytest.mark.parametrize("net", ["ff", "bp"])
def test_a_stop_in_the_memory_meters_finalizers_is_acted_on_at_the_next_step(net):
    assert_stopped_at_every_point(Training(net, meter=True), at_once)


def test_a_stop_ends_training_with_an_interrupt_naming_its_signal():
    training = Training("bp")
    for signum in (signal.SIGINT, signal.SIGTERM):
        name = signal.Signals(signum).name
        assert training.run(10, in_a_finalizer, signum) == (
            KeyboardInterrupt,
            f"stopped by signal {name}",
        )


@pytest.mark.parametrize("net", ["ff", "bp"])
def test_the_time_limit_warning_runs_the_earlier_handler_at_the_next_step(net):
    training = Training(net)
    for at in range(1, training.points + 1):
        submitit = Submitit(training)
        signal.signal(signal.SIGUSR2, submitit)  # before ffbench's, as in a SLURM job
        ended = training.run(at, at_once, signal.SIGUSR2)
        assert training.steps - training.sent_at <= 1
        if training.sent_at < training.total:
            # once, by stops.check() in ordinary code (no frame), not in the signal handler
            assert submitit.calls == [(signal.SIGUSR2, None, training.steps)]
            assert ended == (SystemExit, "-1")
        else:  # in the last evaluation: the next chunk runs it, if there is one
            assert [frame for _, frame, _ in submitit.calls] in ([], [None])


@pytest.mark.parametrize("net", ["ff", "bp"])
@pytest.mark.parametrize("send", [at_once, in_a_finalizer])
def test_a_stop_during_evaluation_lets_no_further_chunk_start(net, send):
    job = digits_job([*NETS[net], *SHORT])
    x = job.data.x_test  # 360 rows: 9 chunks of 40 (FF: 9 for each evaluation)
    chunks = []  # the first layer runs once a chunk
    job.learner.stack.layers[0].register_forward_pre_hook(lambda *args: chunks.append(None))
    stops.install()
    job.learner.predict_all(x, chunk=40)
    total = len(chunks)
    assert total == 9 * (1 + (net == "ff"))
    for at in range(1, total + 1):
        chunks.clear()

        def stop_at(module, args, at=at):
            if len(chunks) == at:
                send(signal.SIGTERM)

        hook = job.learner.stack.layers[0].register_forward_pre_hook(stop_at)
        stops.install()  # forgets the stop of the last round
        # a stop dropped in the last chunk has no chunk left to be acted on in
        stopped = at < total or send is at_once
        with pytest.raises(KeyboardInterrupt) if stopped else contextlib.nullcontext():
            job.learner.predict_all(x, chunk=40)
        hook.remove()
        assert len(chunks) == at, f"{len(chunks) - at} chunks ran after a stop in chunk {at}"


def test_a_stop_left_by_one_job_does_not_stop_the_next_in_the_same_process():
    """A sweep's jobs may share a process (Hydra's basic launcher): a stop that arrived after
    the last step of one job, nothing acting on it, is not the next job's."""
    training = Training("bp")
    in_a_finalizer(signal.SIGTERM)  # dropped: only remembered
    assert training.run(0, at_once) is None  # install()s for its job, as `ffbench` does
    submitit = Submitit(training)
    signal.signal(signal.SIGUSR2, submitit)
    stops.install()
    at_once(signal.SIGUSR2)  # deferred to the next step, which never comes
    assert training.run(0, at_once) is None
    assert submitit.calls == []
