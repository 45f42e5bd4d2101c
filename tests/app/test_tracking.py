"""What a run leaves in MLflow besides its params and metrics (runs of the app in this
process): its data as MLflow dataset inputs, the trained model (tracking.log_model) loaded back
by MLflow's own API, and MLflow's system metrics (tracking.system_metrics)."""

import threading

import mlflow
import numpy as np
import pytest
from helpers import QUICK, all_runs, ffbench_here, store, write_md5sums
from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

from ffbench import data
from ffbench.config import compose


def inputs(run) -> dict:
    """context -> dataset of a run's dataset inputs."""
    found = {}
    for given in run.inputs.dataset_inputs:
        tags = {tag.key: tag.value for tag in given.tags}
        found[tags["mlflow.data.context"]] = given.dataset
    return found


def test_splits_are_dataset_inputs_naming_their_files(launch, mnist_dir, tmp_path):
    """Each split is an input with the data set's name, its own digest and the file it was
    cut from: the bundled digits, and MNIST-format files in a folder of the user's."""
    assert ffbench_here(launch, *QUICK).returncode == 0
    sums = tmp_path / "md5sums"
    write_md5sums(mnist_dir, sums)
    mnist = ["dataset=mnist", f"dataset.root={mnist_dir}", f"dataset.checksums={sums}"]
    result = ffbench_here(launch, *mnist, "dataset.val_size=50", *QUICK)
    assert result.returncode == 0, result.stderr
    runs = {run.data.params["dataset"]: run for run in all_runs(launch)}
    digits = inputs(runs["digits"])
    assert set(digits) == {"training", "validation", "test"}
    bundled = str(data.BUNDLED / "digits-images-idx3-ubyte.gz")
    for dataset in digits.values():
        assert dataset.name == "digits"
        assert f'"uri": "{bundled}"' in dataset.source
    assert len({d.digest for d in digits.values()}) == 3  # three different sets of examples
    mnist = inputs(runs["mnist"])
    train, test = mnist_dir / "train-images-idx3-ubyte.gz", mnist_dir / "t10k-images-idx3-ubyte.gz"
    assert f'"uri": "{train}"' in mnist["training"].source
    assert f'"uri": "{train}"' in mnist["validation"].source
    assert f'"uri": "{test}"' in mnist["test"].source
    assert '"features_shape": [50, 784]' in mnist["validation"].profile


def test_logged_model_loads_back_and_scores_the_test_set_as_the_run_did(launch):
    overrides = ["tracking.log_model=true", "algo=ff", *QUICK]
    result = ffbench_here(launch, *overrides)
    assert result.returncode == 0, result.stderr
    [run] = all_runs(launch)
    [output] = run.outputs.model_outputs
    mlflow.set_tracking_uri(store(launch).tracking_uri)
    logged = mlflow.get_logged_model(output.model_id)
    assert logged.source_run_id == run.info.run_id and logged.status == "READY"
    linked = {m.key: m.value for m in logged.metrics}  # shown beside it under "Logged models"
    assert linked["test_accuracy"] == run.data.metrics["test_accuracy"]

    # the same test split as the run: same config, same split seed
    splits = data.load(compose(overrides).dataset)
    model = mlflow.pyfunc.load_model(f"models:/{output.model_id}")
    labels = model.predict(splits.x_test.numpy())
    accuracy = float(np.mean(labels == splits.y_test.numpy()))
    assert abs(accuracy - run.data.metrics["test_accuracy"]) < 1e-6
    assert model.metadata.signature.inputs.to_dict()[0]["tensor-spec"]["shape"] == (-1, 64)


@pytest.fixture
def sampled(monkeypatch):
    """An event set once MLflow's system-metrics monitor has sent a sample; a monitor told to
    finish waits for that first: the run it samples then ends after one sample, however
    short it is and however busy the machine."""
    sent = threading.Event()
    publish, finish = SystemMetricsMonitor.publish_metrics, SystemMetricsMonitor.finish

    def publish_then_say_so(self, metrics):
        publish(self, metrics)
        sent.set()

    def finish_after_a_sample(self):
        assert sent.wait(timeout=300), "the monitor sent no sample"
        finish(self)

    monkeypatch.setattr(SystemMetricsMonitor, "publish_metrics", publish_then_say_so)
    monkeypatch.setattr(SystemMetricsMonitor, "finish", finish_after_a_sample)
    return sent


def test_system_metrics_are_sampled_into_the_run(launch, sampled):
    result = ffbench_here(
        launch, "tracking.system_metrics=true", "tracking.system_metrics_interval_s=0.2", *QUICK
    )
    assert result.returncode == 0, result.stderr
    [run] = all_runs(launch)
    history = store(launch).get_metric_history(
        run.info.run_id, "system/system_memory_usage_megabytes"
    )
    assert len(history) >= 1 and all(m.value > 0 for m in history)
    assert "system/cpu_utilization_percentage" in run.data.metrics


def test_no_system_metrics_or_model_unless_asked(launch):
    assert ffbench_here(launch, *QUICK).returncode == 0
    [run] = all_runs(launch)
    assert not [key for key in run.data.metrics if key.startswith("system/")]
    assert not run.outputs.model_outputs
