"""Each FF layer's own accuracy in MLflow and in the report (issue 27 section 4): a job of the
app, in this process, logs every layer's validation accuracy after every epoch with the layer
range chosen on validation, and `ffbench-report` shows each layer's test accuracy beside the
range kept."""

from helpers import ONE_THREAD, ffbench_here, store

from ffbench import compare

RANGE = [
    "algo=ff",
    "algo.loss=cwc",
    "algo.label_input=none",
    "algo.negatives=none",
    "algo.readout=false",
    "algo.predictor=layer_range",
    "model=conv",
    "model.kernel=3",
    "model.stride=1",
    "model.padding=1",
    "model.channels=20",
    "model.depth=3",
    "model.norm=standard",
    "optimizer.lr=0.01",
    "trainer.batch_size=64",
    "trainer.epochs=2",
    ONE_THREAD,
]


def test_each_layers_accuracy_is_logged_every_epoch_and_reported(launch, tmp_path):
    result = ffbench_here(launch, *RANGE)
    assert result.returncode == 0, result.stderr
    client = store(launch)
    [run] = client.search_runs([client.get_experiment_by_name("ffbench").experiment_id])
    for name in ("val_accuracy_layer0", "val_accuracy_layer1", "val_accuracy_layer2"):
        history = client.get_metric_history(run.info.run_id, name)
        assert sorted(m.step for m in history) == [1, 2], name
    first = client.get_metric_history(run.info.run_id, "layer_range_first")
    last = client.get_metric_history(run.info.run_id, "layer_range_last")
    assert len(first) == len(last) == 2
    assert all(0 <= a.value <= b.value <= 2 for a, b in zip(first, last, strict=True))
    uri = f"sqlite:///{launch / 'outputs' / 'mlflow.db'}"
    compare.main(["--tracking-uri", uri, "--out", str(tmp_path)])
    text = (tmp_path / compare.TABLE_FILE).read_text()
    assert "Each FF layer alone" in text  # the title, wrapped to the table's width
    metrics = run.data.metrics
    row = [line for line in text.splitlines() if "algo=ff" in line][-1]  # the layers' table
    kept = f"{metrics['layer_range_first']:.0f}-{metrics['layer_range_last']:.0f}"
    assert f"{metrics['test_accuracy_layer2']:.4f}" in row and row.rstrip(" │").endswith(kept)
