"""The MLflow UI on a finished FF + BP sweep, as a user opens it: the links the sweep prints
lead a real `mlflow server` on 127.0.0.1 to the comparison (ffbench's saved view of the runs
table, and the compare-runs page), and (slow, needs Debian's `chromium`) a headless browser
renders them: the model-training pages, the figures as columns with the store's numbers, both
runs side by side. Screenshots go to outputs/ui/ of the repository for a person to look at."""

import json
import re
import subprocess
import sys
import urllib.parse
import urllib.request
from html.parser import HTMLParser
from pathlib import Path

import pytest
from helpers import (
    QUICK,
    REPO,
    clean_env,
    ffbench_here,
    free_port,
    mlflow_server,
    rest,
    run_ffbench,
)

from ffbench import ui as links_module

CHROMIUM = Path("/usr/bin/chromium")  # Debian's `chromium` package
SCREENSHOTS = REPO / "outputs" / "ui"  # git-ignored, like all of outputs/
CHILDREN = {"ff": "ff-sumsq-relu-digits", "bp": "bp-relu-digits"}
GROUPS = ("algo", "dataset", "model", "goodness", "activation", "optimizer")
METRICS = ("test_accuracy", "val_accuracy", "train_time_s", "wall_time_s", "peak_rss_mb")
COLUMNS = [f"params.`{p}`" for p in links_module.PARAMS]
COLUMNS += [f"metrics.`{m}`" for m in links_module.METRICS]
# make test (pytest-xdist, --dist loadgroup): this file's tests on one worker, which builds the
# module's sweep and its server once
pytestmark = pytest.mark.xdist_group("ui")


def printed_links(stdout: str) -> dict[str, str]:
    """{what: URL} of the lines `  what: http://...` that ffbench prints."""
    return dict(re.findall(r"^  (.+?): (http://\S+)$", stdout, re.MULTILINE))


@pytest.fixture(scope="module")
def ui(tmp_path_factory):
    """A server on a finished sweep, and what the sweep printed and recorded."""
    workdir = tmp_path_factory.mktemp("ui")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    result = ffbench_here(workdir, "-m", "algo=ff,bp", *QUICK, f"tracking.ui_url={base}")
    assert result.returncode == 0, result.stderr
    uri = f"sqlite:///{workdir / 'outputs' / 'mlflow.db'}"
    with mlflow_server(uri, cwd=workdir, port=port) as url:
        experiment = rest(url, "experiments/get-by-name", experiment_name="ffbench")["experiment"]
        runs = rest(url, "runs/search", {"experiment_ids": [experiment["experiment_id"]]})["runs"]
        [parent] = [r for r in runs if "mlflow.parentRunId" not in tags(r)]
        children = {r["info"]["run_name"]: r for r in runs if r is not parent}
        yield {
            "url": url,
            "uri": uri,
            "workdir": workdir,
            "experiment": experiment,
            "parent": parent,
            "children": children,
            "links": printed_links(result.stdout),
            "stdout": result.stdout,
        }


def tags(run: dict) -> dict:
    return {t["key"]: t["value"] for t in run["data"].get("tags", [])}


def params(run: dict) -> dict:
    return {p["key"]: p["value"] for p in run["data"].get("params", [])}


def metrics(run: dict) -> dict:
    return {m["key"]: m["value"] for m in run["data"].get("metrics", [])}


def test_server_serves_the_sweep_its_runs_and_their_metrics(ui):
    url, parent, children = ui["url"], ui["parent"], ui["children"]
    with urllib.request.urlopen(f"{url}/", timeout=30) as answer:  # the UI itself
        page = answer.read().decode()
    assert "<title>MLflow</title>" in page and '<div id="root"' in page

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
        values = metrics(run)
        assert set(METRICS) <= values.keys()
        assert 0 < values["train_time_s"] < values["wall_time_s"]
        history = rest(
            url, "metrics/get-history", run_id=run["info"]["run_id"], metric_key="val_accuracy"
        )["metrics"]
        assert sorted(m["step"] for m in history) == [1, 2]
        # the data as dataset inputs: the UI's Dataset column and the run page name them
        contexts = {
            {t["key"]: t["value"] for t in given["tags"]}["mlflow.data.context"]: given["dataset"]
            for given in run["inputs"]["dataset_inputs"]
        }
        assert set(contexts) == {"training", "validation", "test"}
        assert all(d["name"] == "digits" for d in contexts.values())


def test_sweep_prints_links_to_its_view_and_its_compare_page(ui):
    url, experiment, parent = ui["url"], ui["experiment"], ui["parent"]
    eid, pid = experiment["experiment_id"], parent["info"]["run_id"]
    links = list(ui["links"].values())
    assert len(links) == 3, ui["stdout"][-2000:]
    sweep_view, compare, everything = links
    assert (
        sweep_view
        == f"{url}/#/experiments/{eid}/runs?viewStateShareKey=ffbench-sweep-{pid}&workflowType=machine_learning"
    )
    assert everything.endswith("viewStateShareKey=ffbench&workflowType=machine_learning")
    query = urllib.parse.parse_qs(compare.split("?", 1)[1])
    assert compare.startswith(f"{url}/#/compare-runs?")
    ids = {run["info"]["run_id"] for run in ui["children"].values()}
    assert set(json.loads(query["runs"][0])) == ids and json.loads(query["experiments"][0]) == [eid]

    # the views are experiment tags in the UI's format: columns, sort and filter in one
    found = rest(url, "experiments/get", experiment_id=eid)["experiment"]
    views = {t["key"]: t["value"] for t in found["tags"] if t["key"].startswith("mlflow.shared")}
    for key, search in (
        (f"ffbench-sweep-{pid}", f"tags.mlflow.parentRunId = '{pid}'"),
        ("ffbench", "params.algo != ''"),
    ):
        envelope = json.loads(views[f"mlflow.sharedViewState.{key}"])
        state = json.loads(envelope["state"])
        assert state["selectedColumns"][: len(COLUMNS)] == COLUMNS
        assert state["orderByKey"] == "metrics.`test_accuracy`" and state["orderByAsc"] is False
        assert state["searchFilter"] == search
        # the filter is one MLflow's search understands, and it keeps the jobs only
        matched = rest(url, "runs/search", {"experiment_ids": [eid], "filter": search})["runs"]
        assert {run["info"]["run_id"] for run in matched} == ids


def test_make_ui_and_report_print_the_same_links(ui):
    """`make ui` runs `python -m ffbench.ui` before starting the server; ffbench-report ends
    with the links of what it reported."""
    command = [sys.executable, "-m", "ffbench.ui", ui["uri"], "--ui-url", ui["url"]]
    result = subprocess.run(command, capture_output=True, text=True, env=clean_env(), timeout=60)
    assert result.returncode == 0, result.stderr
    printed = list(printed_links(result.stdout).values())
    assert printed == [list(ui["links"].values())[i] for i in (2, 0, 1)]

    report = Path(sys.executable).parent / "ffbench-report"
    result = run_ffbench(ui["workdir"], "--ui-url", ui["url"], exe=str(report))
    assert result.returncode == 0, result.stderr
    everything, compare = printed_links(result.stdout).values()
    assert everything == list(ui["links"].values())[2]
    ids = {run["info"]["run_id"] for run in ui["children"].values()}
    query = urllib.parse.parse_qs(compare.split("?", 1)[1])
    assert set(json.loads(query["runs"][0])) == ids


class Grid(HTMLParser):
    """The cells of the runs table (an ag-grid) in a rendered page: `rows` in display order,
    each {column id: text}, and the column ids of its headers."""

    def __init__(self, page: str):
        super().__init__()
        self.rows: dict[int, dict[str, str]] = {}
        self.headers: list[str] = []
        self.open: list[tuple[str, int | None, str | None]] = []  # (tag, row, column)
        self.feed(page)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        row, column = self.open[-1][1:] if self.open else (None, None)
        if a.get("role") == "row" and (a.get("row-index") or "").isdigit():
            row = int(a["row-index"])
        if a.get("role") == "gridcell":
            column = a.get("col-id")
        if a.get("role") == "columnheader" and a.get("col-id"):
            self.headers.append(a["col-id"])
        if tag not in ("br", "img", "input", "meta", "link", "hr"):  # void: never closed
            self.open.append((tag, row, column))

    def handle_endtag(self, tag):
        if any(t == tag for t, _, _ in self.open):  # not for a void tag closed as <x/>
            while self.open.pop()[0] != tag:
                pass

    def handle_data(self, text):
        if self.open and text.strip():
            _, row, column = self.open[-1]
            if row is not None and column:
                cells = self.rows.setdefault(row, {})
                cells[column] = f"{cells.get(column, '')} {text.strip()}".strip()


def chromium(*options: str, size: str = "2400,1000") -> str:
    """Headless Chromium on a page; what it printed (the rendered DOM for --dump-dom)."""
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"]
    command += ["--disable-dev-shm-usage"]  # a container's /dev/shm is small
    # React renders once the virtual clock has run this long (20 s of page time, about 3 s
    # of real time here); the UI's own requests to the server are waited for meanwhile.
    # Wide: the table draws only the columns in view.
    command += ["--virtual-time-budget=20000", f"--window-size={size}", *options]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def sidebar(page: str, experiment_id: str) -> set[str]:
    """The experiment's pages the sidebar links to: runs, models and traces in the
    model-training view; overview, evaluation runs, prompts and more in the GenAI one."""
    return set(re.findall(rf'href="#/experiments/{experiment_id}/([a-z-]+)', page))


@pytest.mark.slow
@pytest.mark.skipif(not CHROMIUM.exists(), reason="no /usr/bin/chromium: apt-get install chromium")
def test_browser_opens_on_the_comparison(ui):
    eid = ui["experiment"]["experiment_id"]
    sweep_view, compare, _ = ui["links"].values()
    page = chromium("--dump-dom", sweep_view)
    assert sidebar(page, eid) == {"runs", "models", "traces"}, "not the model-training view"
    grid = Grid(page)
    assert set(COLUMNS) <= set(grid.headers), grid.headers
    shown = [cells for _, cells in sorted(grid.rows.items())]
    names = [re.sub(r"^#[0-9a-f]{6} ", "", row["attributes.`Run Name`"]) for row in shown]
    assert sorted(names) == sorted(CHILDREN.values()), "the sweep's jobs, not its parent"
    accuracies = []
    for name, row in zip(names, shown, strict=True):
        run = ui["children"][name]
        assert row["params.`algo`"] == params(run)["algo"]
        accuracy = float(row["metrics.`test_accuracy`"])
        assert accuracy == pytest.approx(metrics(run)["test_accuracy"], abs=1e-9)
        assert float(row["metrics.`peak_rss_mb`"]) == pytest.approx(metrics(run)["peak_rss_mb"])
        assert "digits" in row["attributes.`Dataset`"]
        accuracies.append(accuracy)
    assert accuracies == sorted(accuracies, reverse=True)  # best first

    page = chromium("--dump-dom", compare)
    assert "Comparing 2 Runs from 1 Experiment" in page
    assert "Parallel Coordinates Plot" in page
    for algo, name in CHILDREN.items():
        assert name in page and f">{algo}<" in page

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    for url, name in ((sweep_view, "comparison.png"), (compare, "compare-runs.png")):
        shot = SCREENSHOTS / name
        shot.unlink(missing_ok=True)
        chromium(f"--screenshot={shot}", url, size="1800,640")  # docs/images/ has these
        assert shot.stat().st_size > 20_000  # a rendered page, not a blank one
