"""Runs and sweeps of `ffbench`, run by the Hydra app in this process, and what MLflow holds
for each: params, per-epoch metrics, tags, artifacts, the store under the launch directory,
the environment's store and experiment, the `--help` text. What only the installed command in
a process of its own shows (signals, a non-editable install, `make ui`) is in
tests/e2e/test_cli.py."""

import importlib.resources

import pytest
from helpers import QUICK, all_runs, ffbench_here, store

from ffbench.config import GROUPS, options_text, schema_keys

FINAL_METRICS = {
    "test_accuracy",
    "val_accuracy",
    "train_accuracy",
    "wall_time_s",
    "train_time_s",
    "peak_rss_mb",
    "samples_per_s",
}


@pytest.mark.parametrize("algo", ["ff", "bp"])
def test_default_run_reaches_90_percent_and_records_everything(workdir, algo):
    """`ffbench algo=X` with the shipped defaults, launched outside the repository: it creates
    the store (workdir has none)."""
    result = ffbench_here(workdir, f"algo={algo}")
    assert result.returncode == 0, result.stderr
    [run] = all_runs(workdir)
    assert run.info.status == "FINISHED"
    metrics, params, tags = run.data.metrics, run.data.params, run.data.tags
    assert FINAL_METRICS <= metrics.keys()
    # measured: FF 0.96, BP 0.98 on every split; chance is 0.1
    for name in ("test_accuracy", "val_accuracy", "train_accuracy"):
        assert metrics[name] >= 0.90, (name, metrics[name])
    assert 0 < metrics["train_time_s"] < metrics["wall_time_s"]
    assert metrics["peak_rss_mb"] > 50  # torch alone takes more than that
    assert metrics["samples_per_s"] > 0
    # the flattened resolved config, plus one param and one tag per group choice
    assert params["model.depth"] == "2" and params["trainer.epochs"] == "50"
    assert params["algo.name"] == algo
    assert {k: params[k] for k in GROUPS} == {k: tags[k] for k in GROUPS}
    assert params["algo"] == algo and params["dataset"] == "digits"
    expected_name = "ff-sumsq-relu-digits" if algo == "ff" else "bp-relu-digits"
    assert run.info.run_name == expected_name
    # per-epoch history, one point per epoch
    client = store(workdir)
    history = client.get_metric_history(run.info.run_id, "val_accuracy")
    assert [m.step for m in history] == list(range(1, 51))
    assert len(client.get_metric_history(run.info.run_id, "epoch_time_s")) == 50
    if algo == "ff":
        for layer in (0, 1):
            assert len(client.get_metric_history(run.info.run_id, f"layer{layer}_loss")) == 50
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "hydra"} <= artifacts
    hydra_files = {a.path for a in client.list_artifacts(run.info.run_id, "hydra")}
    assert {"hydra/config.yaml", "hydra/overrides.yaml", "hydra/hydra.yaml"} <= hydra_files
    # the store and Hydra's folders sit under the launch directory's outputs/
    assert (workdir / "outputs" / "mlflow.db").is_file()
    assert list((workdir / "outputs" / "runs").glob("*/*/.hydra/config.yaml"))
    assert not (workdir / "mlruns").exists()
    assert "test acc" in result.stdout  # the rich summary table


def test_multirun_gives_one_parent_and_two_children(launch):
    result = ffbench_here(launch, "-m", "algo=ff,bp", *QUICK)
    assert result.returncode == 0, result.stderr
    runs = all_runs(launch)
    assert len(runs) == 3
    [parent] = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(r.data.params["algo"] for r in children) == ["bp", "ff"]
    assert {r.info.status for r in runs} == {"FINISHED"}
    assert parent.data.metrics["jobs_finished"] == 2
    assert sorted(r.data.tags["ffbench.job_num"] for r in children) == ["0", "1"]
    assert list((launch / "outputs" / "multirun").glob("*/*/1/.hydra"))


def test_ff_options_sweep_and_are_logged_as_params(launch):
    sweep = ["goodness=split,meansq", "goodness.inverted=true", "algo.loss=symba"]
    result = ffbench_here(launch, "-m", *sweep, "algo.evaluation=readout", *QUICK)
    assert result.returncode == 0, result.stderr
    children = [r for r in all_runs(launch) if "mlflow.parentRunId" in r.data.tags]
    assert sorted(r.data.params["goodness"] for r in children) == ["meansq", "split"]
    for run in children:
        assert run.info.status == "FINISHED"
        assert run.data.params["goodness.inverted"] == "True"
        assert run.data.params["algo.loss"] == "symba"
        metrics = run.data.metrics
        assert metrics["test_accuracy"] == metrics["test_accuracy_readout"]
        assert "test_accuracy_goodness" in metrics and "val_accuracy_goodness" in metrics


def test_environment_overrides_store_and_experiment(workdir, tmp_path):
    db = tmp_path / "elsewhere.db"
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{db}", "MLFLOW_EXPERIMENT_NAME": "mine"}
    result = ffbench_here(workdir, *QUICK, env=env)
    assert result.returncode == 0, result.stderr
    assert not (workdir / "outputs" / "mlflow.db").exists()
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{db}")
    experiment = client.get_experiment_by_name("mine")
    [run] = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"


def presets(group: str) -> list[str]:
    """The options of a group that only conf/ holds (`+experiment=NAME`, `+study=NAME`)."""
    folder = importlib.resources.files("ffbench.conf") / group
    if not folder.is_dir():
        return []
    return sorted(
        p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml")
    )


def test_help_lists_every_group_and_the_schema_s_keys(workdir):
    """Every group's options (its registry's names and its YAML files), every preset, and the
    key table, which is the schema's, generated (options_text)."""
    result = ffbench_here(workdir, "--help")
    assert result.returncode == 0
    assert options_text() in result.stdout
    assert "  model.kernel = 5  [positive]" in result.stdout
    keys = dict(schema_keys())
    for group in GROUPS:
        options = {*keys[f"{group}.name"].metadata["choices"], *presets(group)}
        assert f"{group}: {', '.join(sorted(options))}\n" in result.stdout, group
    for group in ("experiment", "study"):
        assert f"{group}: {', '.join(presets(group))}\n" in result.stdout, group
    assert not (workdir / "outputs").exists()
