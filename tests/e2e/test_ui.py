"""The MLflow UI on a store holding a finished sweep: a real `mlflow server` on 127.0.0.1
serves the experiment, the parent run and its children with their params and metrics over
HTTP, and (slow, needs Debian's `chromium`) a headless browser renders the runs by name,
leaving screenshots in outputs/ui/ of the repository for a person to look at."""

import re
import subprocess
import urllib.request
from pathlib import Path

import pytest
from helpers import QUICK, REPO, mlflow_server, rest, run_ffbench

CHROMIUM = Path("/usr/bin/chromium")  # Debian's `chromium` package
SCREENSHOTS = REPO / "outputs" / "ui"  # git-ignored, like all of outputs/
CHILDREN = {"ff": "ff-sumsq-relu-digits", "bp": "bp-relu-digits"}
GROUPS = ("algo", "dataset", "model", "goodness", "activation", "optimizer")
METRICS = ("test_accuracy", "val_accuracy", "train_time_s", "wall_time_s", "peak_rss_mb")


@pytest.fixture(scope="module")
def ui(tmp_path_factory):
    """(URL, experiment id, parent run, children by name) of a server on a finished sweep."""
    workdir = tmp_path_factory.mktemp("ui")
    result = run_ffbench(workdir, "-m", "algo=ff,bp", *QUICK)
    assert result.returncode == 0, result.stderr
    with mlflow_server(f"sqlite:///{workdir / 'outputs' / 'mlflow.db'}", cwd=workdir) as url:
        experiment = rest(url, "experiments/get-by-name", experiment_name="ffbench")["experiment"]
        kind = {t["key"]: t["value"] for t in experiment.get("tags", [])}
        assert kind["mlflow.experimentKind"] == "custom_model_development"  # "Model training"
        runs = rest(url, "runs/search", {"experiment_ids": [experiment["experiment_id"]]})["runs"]
        [parent] = [r for r in runs if "mlflow.parentRunId" not in tags(r)]
        children = {r["info"]["run_name"]: r for r in runs if r is not parent}
        yield url, experiment["experiment_id"], parent, children


def tags(run: dict) -> dict:
    return {t["key"]: t["value"] for t in run["data"].get("tags", [])}


def params(run: dict) -> dict:
    return {p["key"]: p["value"] for p in run["data"].get("params", [])}


def metrics(run: dict) -> dict:
    return {m["key"]: m["value"] for m in run["data"].get("metrics", [])}


def test_server_serves_the_sweep_its_runs_and_their_metrics(ui):
    url, _, parent, children = ui
    with urllib.request.urlopen(f"{url}/", timeout=30) as answer:  # the UI itself
        page = answer.read().decode()
    assert "<title>MLflow</title>" in page and '<div id="root"' in page
    [bundle] = re.findall(r'src="(static-files/static/js/main\.[0-9a-f]+\.js)"', page)
    with urllib.request.urlopen(f"{url}/{bundle}", timeout=30) as answer:
        assert answer.status == 200 and len(answer.read()) > 100_000

    assert parent["info"]["run_name"].startswith("sweep-")
    assert parent["info"]["status"] == "FINISHED"
    assert metrics(parent)["jobs_finished"] == 2
    assert set(children) == set(CHILDREN.values())
    for algo, name in CHILDREN.items():
        run = children[name]
        assert run["info"]["status"] == "FINISHED"
        assert tags(run)["mlflow.parentRunId"] == parent["info"]["run_id"]
        # every group choice is a param and a tag, with the same value
        choices = {group: params(run)[group] for group in GROUPS}
        assert choices == {group: tags(run)[group] for group in GROUPS}
        assert choices["algo"] == algo and choices["dataset"] == "digits"
        assert params(run)["trainer.epochs"] == "2" and params(run)["model.width"] == "32"
        values = metrics(run)
        assert set(METRICS) <= values.keys()
        assert 0 <= values["test_accuracy"] <= 1
        assert 0 < values["train_time_s"] < values["wall_time_s"]
        assert values["peak_rss_mb"] > 50
        history = rest(
            url, "metrics/get-history", run_id=run["info"]["run_id"], metric_key="val_accuracy"
        )["metrics"]
        assert sorted(m["step"] for m in history) == [1, 2]
        assert all(0 <= m["value"] <= 1 for m in history)


def chromium(*options: str) -> str:
    """Headless Chromium on a page; what it printed (the rendered DOM for --dump-dom)."""
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"]
    command += ["--disable-dev-shm-usage"]  # a container's /dev/shm is small
    # React renders once the virtual clock has run this long (20 s of page time, about 3 s
    # of real time here); the UI's own requests to the server are waited for meanwhile.
    command += ["--virtual-time-budget=20000", *options]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.mark.slow
@pytest.mark.skipif(not CHROMIUM.exists(), reason="no /usr/bin/chromium: apt-get install chromium")
def test_browser_renders_the_runs_by_name(ui):
    url, experiment_id, parent, children = ui
    # Sorted by a metric, the runs table lists children flat beside their parent (unsorted,
    # it shows the parent with its children folded under it).
    runs_page = f"{url}/#/experiments/{experiment_id}/runs?orderByKey=metrics.%60test_accuracy%60"
    dom = chromium("--dump-dom", runs_page)
    for name in [parent["info"]["run_name"], *CHILDREN.values()]:
        assert name in dom, f"{name} is not on the rendered experiment page"
    run_page = f"{url}/#/experiments/{experiment_id}/runs/"
    run_page += children[CHILDREN["ff"]]["info"]["run_id"]
    dom = chromium("--dump-dom", run_page)
    for text in [CHILDREN["ff"], parent["info"]["run_name"], *METRICS]:
        assert text in dom, f"{text} is not on the rendered run page"

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    for page, name in ((runs_page, "experiment.png"), (run_page, "run.png")):
        shot = SCREENSHOTS / name
        shot.unlink(missing_ok=True)
        chromium(f"--screenshot={shot}", "--window-size=1400,900", page)
        assert shot.stat().st_size > 20_000  # a rendered page, not a blank one
