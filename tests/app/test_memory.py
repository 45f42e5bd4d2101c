"""Memory figures of whole sweeps (the app in this process): every job of a depth sweep
records its own exact figures and the sweep draws its picture, also without
/proc/self/clear_refs and with failed jobs. The counters themselves are in
tests/unit/test_memory.py."""

from pathlib import Path

import pytest
from helpers import QUICK, all_runs, ffbench_here, store

from ffbench import measure
from ffbench.analytic import saved_activation_bytes
from ffbench.measure import MB

MEMORY_METRICS = {"peak_saved_activations_mb", "peak_rss_mb", "param_mb", "optimizer_state_mb"}


def test_depth_preset_records_exact_figures_per_job_and_draws_the_picture(launch):
    """The preset, shrunk: every job of one process gets its own figures, equal to the
    prediction (so nothing carries over between jobs), and the sweep draws its picture."""
    width, batch, features = 32, 32, 64  # digits: 8x8 pixels
    result = ffbench_here(
        launch,
        "-m",
        "+experiment=memory_depth",
        "model.depth=1,2",
        "algo=ff,bp,bp_ckpt",
        f"model.width={width}",
        f"trainer.batch_size={batch}",
    )
    assert result.returncode == 0, result.stderr
    runs = all_runs(launch)
    [parent] = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if r is not parent]
    assert len(children) == 6 and {r.info.status for r in runs} == {"FINISHED"}
    for run in children:
        algo, depth = run.data.params["algo"], int(run.data.params["model.depth"])
        assert run.data.params["trainer.epochs"] == "1"  # from the preset
        assert MEMORY_METRICS <= run.data.metrics.keys()
        predicted = saved_activation_bytes(algo, batch, width, depth, features)
        assert run.data.metrics["peak_saved_activations_mb"] * MB == pytest.approx(predicted)
        params = (features + 1) * width + (depth - 1) * (width + 1) * width
        # BP's output layer, or FF's read-out on the layers above the first
        readout_in = width * (depth - (depth > 1)) if algo == "ff" else width
        params += (readout_in + 1) * 10
        assert run.data.metrics["param_mb"] * MB == 4 * params
        # Adam: two moments per parameter, plus a 4-byte step counter per tensor
        tensors = 2 * depth + 2
        assert run.data.metrics["optimizer_state_mb"] * MB == 8 * params + 4 * tensors
    sweep_dir = parent.data.tags["ffbench.sweep_dir"]
    picture = launch / sweep_dir / "memory_vs_depth.png"
    assert picture.read_bytes().startswith(b"\x89PNG")
    artifacts = {a.path for a in store(launch).list_artifacts(parent.info.run_id)}
    assert "memory_vs_depth.png" in artifacts
    assert "memory against depth" in result.stdout and "algo=bp_ckpt" in result.stdout


def test_without_proc_a_depth_sweep_with_a_failed_job_still_measures_and_draws(launch, monkeypatch):
    """One process, the bad cases together: no /proc/self/clear_refs (RSS falls back to
    sampling and says so), jobs that fail (listed, left out of the picture) and jobs with
    measure.memory=false (no memory figures, no tag)."""
    diverge = ["model.norm=none", "optimizer=sgd", "optimizer.lr=1e10,0.01"]
    sweep = ["+experiment=memory_depth", "algo=bp", "model.depth=1,2", "measure.memory=true,false"]
    monkeypatch.setattr(measure, "_CLEAR_REFS", Path("/nonexistent/clear_refs"))  # as without /proc
    result = ffbench_here(launch, "-m", *sweep, *diverge, *QUICK)
    assert result.returncode != 0  # a job failed
    runs = all_runs(launch)
    [parent] = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert parent.info.status == "FAILED"
    children = [r for r in runs if r is not parent]
    assert len(children) == 8
    for run in children:
        failed = run.data.params["optimizer.lr"] != "0.01"
        assert run.info.status == ("FAILED" if failed else "FINISHED")
        if failed:
            assert "diverged" in run.data.tags["ffbench.error"]
        elif run.data.params["measure.memory"] == "True":
            assert run.data.tags["ffbench.peak_rss_method"] == "sampled"
            assert MEMORY_METRICS <= run.data.metrics.keys()
            assert run.data.metrics["peak_rss_mb"] > 50
        else:
            assert not MEMORY_METRICS & run.data.metrics.keys()
            assert "ffbench.peak_rss_method" not in run.data.tags
            assert "test_accuracy" in run.data.metrics
    picture = launch / parent.data.tags["ffbench.sweep_dir"] / "memory_vs_depth.png"
    assert picture.read_bytes().startswith(b"\x89PNG")
    assert "FAILED" in result.stdout and "optimizer.lr=0.01" in result.stdout
