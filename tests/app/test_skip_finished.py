"""No duplicate work (skip_finished): a sweep job whose relevant settings already have a FINISHED run in
the experiment is recorded as skipped instead of trained; failed runs never count; every run
carries the commit of the code (read by running git). Sweeps of the app in this process; which
settings count as the same job is in tests/unit/test_sweeps.py."""

import shutil
import subprocess
from pathlib import Path

import pytest
from helpers import QUICK, REPO, all_runs, ffbench_here

from ffbench import tracking

SWEEP = ["-m", "algo=ff,bp", "goodness=sumsq,meansq", *QUICK]
# As in test_bad_input: without normalisation a huge SGD step overflows to NaN.
DIVERGE = ["model.norm=none", "optimizer=sgd"]


def _jobs(cwd: Path) -> list:
    """The child runs of every sweep so far, oldest first."""
    runs = [r for r in all_runs(cwd) if "mlflow.parentRunId" in r.data.tags]
    return sorted(runs, key=lambda r: r.info.start_time)


def _trained(runs) -> list:
    return [r for r in runs if "ffbench.skipped" not in r.data.tags]


def _combo(run) -> tuple[str, str]:
    return run.data.params["algo"], run.data.params["goodness"]


def test_bp_is_trained_once_per_sweep_and_a_rerun_trains_nothing(launch):
    first = ffbench_here(launch, *SWEEP)
    assert first.returncode == 0, first.stderr
    jobs = _jobs(launch)
    assert [_combo(r) for r in jobs] == [
        ("ff", "sumsq"),
        ("ff", "meansq"),
        ("bp", "sumsq"),
        ("bp", "meansq"),
    ]
    ff_sumsq, ff_meansq, bp, bp_copy = jobs
    assert _trained(jobs) == [ff_sumsq, ff_meansq, bp]
    # goodness changes FF's result but not BP's
    hashes = [r.data.tags["ffbench.settings_hash"] for r in jobs]
    assert len(set(hashes[:3])) == 3 and hashes[3] == hashes[2]
    # the skipped job points to the run holding the result and shows its numbers
    tags = bp_copy.data.tags
    assert tags["ffbench.skipped"] == "true"
    assert tags["ffbench.result_run_id"] == bp.info.run_id
    assert bp_copy.info.status == "FINISHED"
    assert bp_copy.data.metrics["test_accuracy"] == bp.data.metrics["test_accuracy"]
    assert f"reused run {bp.info.run_id}" in first.stdout
    # every run and the parent carry the commit of the code
    commit = tracking.git_commit()
    assert {r.data.tags["ffbench.git_commit"] for r in all_runs(launch)} == {commit}

    # the same sweep again: every job finds its result, nothing is trained
    again = ffbench_here(launch, *SWEEP)
    assert again.returncode == 0, again.stderr
    rerun = _jobs(launch)[4:]
    assert len(rerun) == 4 and _trained(rerun) == []
    originals = [ff_sumsq, ff_meansq, bp, bp]
    pointed = [r.data.tags["ffbench.result_run_id"] for r in rerun]
    assert pointed == [r.info.run_id for r in originals]
    assert {r.info.status for r in all_runs(launch)} == {"FINISHED"}

    # skip_finished=false: every job trains, the bp duplicate too
    fresh = ffbench_here(launch, *SWEEP, "skip_finished=false")
    assert fresh.returncode == 0, fresh.stderr
    fresh_jobs = _jobs(launch)[8:]
    assert len(_trained(fresh_jobs)) == 4
    assert [r.data.tags["ffbench.settings_hash"] for r in fresh_jobs] == hashes


def test_the_old_name_resume_still_works_with_a_warning(launch):
    sweep = ["-m", "algo=bp", *QUICK]
    assert ffbench_here(launch, *sweep).returncode == 0
    old = ffbench_here(launch, *sweep, "resume=false")
    assert old.returncode == 0, old.stderr
    assert len(_trained(_jobs(launch))) == 2  # trained again, as with skip_finished=false
    [warning] = [line for line in old.stderr.splitlines() if "resume" in line]
    assert warning == (
        "ffbench: warning: resume=false is deprecated: use skip_finished=false instead"
    )


def test_rerun_after_a_failed_job_trains_only_that_one(launch):
    sweep = ["-m", *DIVERGE, "optimizer.lr=1e10,0.01", *QUICK]
    for _ in range(2):
        assert ffbench_here(launch, *sweep).returncode != 0  # the 1e10 job diverges
    by_lr: dict[str, list] = {}
    for run in _jobs(launch):
        by_lr.setdefault(run.data.params["optimizer.lr"], []).append(run)
    failed, fine = by_lr["10000000000.0"], by_lr["0.01"]
    # the failed combination ran again; the finished one was reused
    assert [r.info.status for r in failed] == ["FAILED", "FAILED"]
    assert _trained(failed) == failed
    assert [r.info.status for r in fine] == ["FINISHED", "FINISHED"]
    assert _trained(fine) == fine[:1]
    assert fine[1].data.tags["ffbench.result_run_id"] == fine[0].info.run_id


def test_git_commit_of_this_checkout_or_unknown(tmp_path, monkeypatch):
    if shutil.which("git") and (REPO / ".git").exists():
        head = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
        assert tracking.git_commit().removesuffix("-dirty") == head
    assert tracking.git_commit(tmp_path) == "unknown"  # not a checkout, as for a wheel
    monkeypatch.setenv("PATH", str(tmp_path))  # no git at all
    assert tracking.git_commit.__wrapped__(REPO / "ffbench") == "unknown"


@pytest.fixture(autouse=True)
def _fresh_git_cache():
    tracking.git_commit.cache_clear()
