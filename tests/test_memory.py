"""Memory figures: the saved-activation counter, its agreement with the analytical prediction,
FF against BP as depth grows, the RSS fallbacks, and what a run and a depth sweep record."""

import subprocess
import sys
import threading

import pytest
import torch
import torch.nn.functional as F
from conftest import QUICK, all_runs, clean_env, make_algorithm, run_ffbench, store

from ffbench import measure
from ffbench.analytic import saved_activation_bytes
from ffbench.measure import MB, PeakMemory, SavedTensors

CPU = torch.device("cpu")
MEMORY_METRICS = {"peak_saved_activations_mb", "peak_rss_mb", "param_mb", "optimizer_state_mb"}


def algorithm(algo, width, depth, features, activation="relu", norm="mean_square", accum=1):
    overrides = [f"algo={algo}", f"model.width={width}", f"model.depth={depth}"]
    overrides += [
        f"activation={activation}",
        f"model.norm={norm}",
        f"trainer.grad_accum_steps={accum}",
    ]
    return make_algorithm(features, overrides)


def measured_bytes(algo, batch, width, depth, features, **kwargs) -> int:
    learner = algorithm(algo, width, depth, features, **kwargs)
    x, y = torch.rand(batch, features), torch.randint(0, 10, (batch,))
    with PeakMemory(CPU, learner.model.parameters()) as memory:
        learner.train_epoch(x, y, batch)
    assert memory.saved.live_bytes == 0  # every graph was freed by its backward pass
    return memory.saved.peak_bytes


def test_each_storage_counts_once_and_stops_counting_when_its_graph_is_freed():
    a = torch.rand(1000, requires_grad=True)  # 4000 bytes
    with SavedTensors() as saved:
        b = a.exp()  # saves its output b
        c = b.exp()  # saves c; b is already counted
        assert saved.live_bytes == 8000
        s, t = a.sin(), a.cos()  # both save a: one storage, counted once
        assert saved.live_bytes == 12000
        (c.sum() + s.sum() + t.sum()).backward()
        assert saved.live_bytes == 0 and saved.peak_bytes == 12000
        d = a.exp()
        assert saved.live_bytes == 4000
        del d  # dropping a graph without backward releases it too
        assert saved.live_bytes == 0
    e = a.exp()  # outside the block nothing is counted
    assert saved.peak_bytes == 12000 and saved.live_bytes == 0
    del e


def test_parameters_are_not_counted():
    layer = torch.nn.Linear(100, 50)
    x = torch.rand(8, 100, requires_grad=True)
    with SavedTensors(layer.parameters()) as saved:
        layer(x).sum().backward()  # saves x (for the weight) and the weight (for x)
    assert saved.peak_bytes == 8 * 100 * 4


@pytest.mark.parametrize("algo", ["ff", "bp", "bp_ckpt"])
@pytest.mark.parametrize(
    "activation, norm", [("relu", "mean_square"), ("gelu", "unit_length"), ("tanh", "none")]
)
@pytest.mark.parametrize("depth", [1, 3])
def test_measured_saved_activations_equal_the_prediction_to_the_byte(algo, activation, norm, depth):
    for batch, width, features in ((8, 16, 20), (5, 30, 12)):
        measured = measured_bytes(
            algo, batch, width, depth, features, activation=activation, norm=norm
        )
        predicted = saved_activation_bytes(
            algo, batch, width, depth, features, activation=activation, norm=norm
        )
        assert measured == predicted, (batch, width, features)


def test_bp_grows_linearly_with_depth_while_ff_stays_flat():
    """MNIST-like: the input (784) is wider than the hidden layers, as in the paper's nets."""
    depths = (1, 2, 4, 8)
    ff = [measured_bytes("ff", 8, 64, d, 784) for d in depths]
    bp = [measured_bytes("bp", 8, 64, d, 784) for d in depths]
    ckpt = [measured_bytes("bp_ckpt", 8, 64, d, 784) for d in depths]
    assert ff[-1] / ff[0] < 1.2
    # Each added layer adds the same bytes, a straight line in depth: for BP its activation,
    # normalised copy and per-row norm (8 rows of 4-byte floats); for checkpointed BP its input.
    for series, per_layer in ((bp, 4 * 8 * (2 * 64 + 1)), (ckpt, 4 * 8 * 64)):
        for d, value in zip(depths, series, strict=True):
            assert value == series[0] + per_layer * (d - 1)
    assert ff[-1] < bp[-1]


def test_gradient_accumulation_gives_the_same_update_at_a_micro_batch_memory():
    x, y = torch.rand(12, 20), torch.randint(0, 10, (12,))
    weights = []
    for accum in (1, 4):
        learner = algorithm("bp", 16, 3, 20, accum=accum)
        learner.optimizer = torch.optim.SGD(learner.model.parameters(), lr=0.1)
        learner.train_epoch(x, y, 12)
        weights.append(torch.cat([p.flatten() for p in learner.model.parameters()]))
    assert torch.allclose(weights[0], weights[1], atol=1e-6)
    assert measured_bytes("bp", 12, 16, 3, 20, accum=4) == saved_activation_bytes(
        "bp", 3, 16, 3, 20
    )


def test_checkpointed_bp_computes_the_same_gradients_as_bp():
    x, y = torch.rand(8, 20), torch.randint(0, 10, (8,))
    grads = []
    for algo in ("bp", "bp_ckpt"):
        learner = algorithm(algo, 16, 3, 20)
        F.cross_entropy(learner.model(x), y).backward()
        grads.append(torch.cat([p.grad.flatten() for p in learner.model.parameters()]))
    assert torch.allclose(grads[0], grads[1])


def test_peak_rss_falls_back_to_sampling_without_clear_refs(monkeypatch, tmp_path):
    monkeypatch.setattr(measure, "_CLEAR_REFS", tmp_path / "no" / "clear_refs")
    threads = threading.active_count()
    with PeakMemory(CPU) as memory:
        big = torch.ones(64 * MB // 4)  # 64 MiB, touched
        big += 1
        del big
    assert memory.method == "sampled"
    assert memory.peak_rss_mb > 64
    assert threading.active_count() == threads  # the sampler is stopped


def test_peak_rss_without_any_proc_file_still_gives_a_figure(monkeypatch, tmp_path):
    for name in ("_STATUS", "_CLEAR_REFS", "_STATM"):
        monkeypatch.setattr(measure, name, tmp_path / "no" / name)
    monkeypatch.setitem(sys.modules, "psutil", None)  # as if psutil were not installed
    with PeakMemory(CPU) as memory:
        torch.ones(1000).sum()
    assert memory.method == "ru_maxrss_not_reset"
    assert memory.peak_rss_mb > 50  # the process's lifetime peak: torch alone is above that


def test_depth_preset_records_exact_figures_per_job_and_draws_the_picture(workdir):
    """The preset, shrunk: every job of one process gets its own figures, equal to the
    prediction (so nothing carries over between jobs), and the sweep draws its picture."""
    width, batch, features = 32, 32, 64  # digits: 8x8 pixels
    result = run_ffbench(
        workdir,
        "-m",
        "+experiment=memory_depth",
        "model.depth=1,2",
        "algo=ff,bp,bp_ckpt",
        f"model.width={width}",
        f"trainer.batch_size={batch}",
    )
    assert result.returncode == 0, result.stderr
    runs = all_runs(workdir)
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
    picture = workdir / sweep_dir / "memory_vs_depth.png"
    assert picture.read_bytes().startswith(b"\x89PNG")
    artifacts = {a.path for a in store(workdir).list_artifacts(parent.info.run_id)}
    assert "memory_vs_depth.png" in artifacts
    assert "memory against depth" in result.stdout and "algo=bp_ckpt" in result.stdout


# The installed command with /proc/self/clear_refs made unreachable, as on a system without it.
NO_CLEAR_REFS = """
import sys
from pathlib import Path
import ffbench.measure
ffbench.measure._CLEAR_REFS = Path("/nonexistent/clear_refs")
from ffbench.cli import main
sys.argv = ["ffbench", *sys.argv[1:]]
main()
"""


def test_without_proc_a_depth_sweep_with_a_failed_job_still_measures_and_draws(workdir):
    """One process, the bad cases together: no /proc/self/clear_refs (RSS falls back to
    sampling and says so), jobs that fail (listed, left out of the picture) and jobs with
    measure.memory=false (no memory figures, no tag)."""
    diverge = ["model.norm=none", "optimizer=sgd", "optimizer.lr=1e10,0.01"]
    sweep = ["+experiment=memory_depth", "algo=bp", "model.depth=1,2", "measure.memory=true,false"]
    result = subprocess.run(
        [sys.executable, "-c", NO_CLEAR_REFS, "-m", *sweep, *diverge, *QUICK],
        cwd=workdir,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode != 0  # a job failed
    runs = all_runs(workdir)
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
    picture = workdir / parent.data.tags["ffbench.sweep_dir"] / "memory_vs_depth.png"
    assert picture.read_bytes().startswith(b"\x89PNG")
    assert "FAILED" in result.stdout and "optimizer.lr=0.01" in result.stdout


def test_sequential_ff_holds_one_layer_and_caches_nothing():
    """Training layer k alone recomputes the frozen layers below without a graph: the peak is
    that one layer's, and nothing is left alive between minibatches."""
    batch, width, features = 16, 32, 64
    learner = algorithm("ff", width, 4, features)
    x, y = torch.rand(4 * batch, features), torch.randint(0, 10, (4 * batch,))
    with PeakMemory(CPU, learner.model.parameters()) as memory:
        learner.train_epoch(x, y, batch, layer=3)
    assert memory.saved.live_bytes == 0
    # the top layer's input is `width` wide: the same as a two-layer net on `width` features
    assert memory.saved.peak_bytes == saved_activation_bytes("ff", batch, width, 2, width)
