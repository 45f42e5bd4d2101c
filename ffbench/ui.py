"""Links into the MLflow UI that open on the comparison: the runs table with ffbench's columns,
sorted by test accuracy, and MLflow's compare-runs page for a sweep's jobs.

What MLflow 3's UI takes from outside (read from its source, docs/tracking.md):
- the URL of the runs table takes a sort and a filter, but not the columns; its
  `workflowType=machine_learning` picks the "Model training" pages over the GenAI ones (the
  experiment's kind tag no longer does);
- a saved view ("Views" menu, "Save & share view") is an experiment tag
  `mlflow.sharedViewState.<key>` holding the columns, sort and filter, opened by
  `viewStateShareKey=<key>` in the URL; ffbench writes such views. The UI ignores a view whose
  URL carries a sort or filter of its own, so the view holds them all;
- the compare-runs page takes the run ids and experiment ids as JSON lists.
"""

import argparse
import json
import time
from pathlib import Path
from urllib.parse import quote, urlencode

from mlflow.tracking import MlflowClient

from ffbench.tags import SWEEP_DIR

DEFAULT_UI = "http://127.0.0.1:5000"  # where `make ui` and `mlflow ui` serve
VIEW_TAG = "mlflow.sharedViewState."
PARAMS = ("algo", "goodness", "activation", "dataset")
METRICS = ("test_accuracy", "peak_saved_activations_mb", "peak_rss_mb", "train_time_s")
SORT = "metrics.`test_accuracy`"
# The runs of jobs: a sweep's parent run has no params, and no figures to compare.
JOBS = "params.algo != ''"
EXPERIMENT_VIEW = "ffbench"
SWEEP_VIEW = "ffbench-sweep-"  # + the parent run's id
EXPERIMENT_LINK = "all runs of the experiment"  # the label of experiment_links' URL
KEEP_SWEEP_VIEWS = 20  # the UI lists every view in one menu, and saves no more than 40


def base_url(ui_url: str | None, tracking_uri: str) -> str:
    """The UI's address: `ui_url` if given, else the tracking server's, else `make ui`'s."""
    if ui_url:
        return ui_url.rstrip("/")
    if tracking_uri.startswith(("http://", "https://")):
        return tracking_uri.rstrip("/")
    return DEFAULT_UI


def _column(kind: str, key: str) -> str:
    return f"{kind}.`{key}`"


def save_view(client: MlflowClient, experiment_id: str, key: str, name: str, search: str) -> None:
    """The view `key` of the experiment: runs matching `search`, ffbench's columns, best test
    accuracy first (the UI's own format: a JSON envelope around the view's JSON)."""
    columns = [_column("params", p) for p in PARAMS] + [_column("metrics", m) for m in METRICS]
    columns.append(_column("attributes", "Dataset"))  # the dataset inputs, by name and context
    state = {
        "searchFilter": search,
        "orderByKey": SORT,
        "orderByAsc": False,
        "selectedColumns": columns,
        "columnOrder": columns,
    }
    now = int(time.time() * 1000)
    envelope = {"name": name, "createdAt": now, "updatedAt": now, "state": json.dumps(state)}
    client.set_experiment_tag(experiment_id, VIEW_TAG + key, json.dumps(envelope))


def runs_url(base: str, experiment_id: str, view: str) -> str:
    query = urlencode({"viewStateShareKey": view, "workflowType": "machine_learning"})
    return f"{base}/#/experiments/{experiment_id}/runs?{query}"


def compare_url(base: str, experiment_id: str, run_ids: list[str]) -> str:
    """MLflow's compare-runs page: parallel coordinates, and params and metrics side by side."""
    runs, experiments = (
        quote(json.dumps(ids, separators=(",", ":"))) for ids in (run_ids, [experiment_id])
    )
    return (
        f"{base}/#/compare-runs?runs={runs}&experiments={experiments}&workflowType=machine_learning"
    )


def experiment_links(client: MlflowClient, experiment_id: str, base: str) -> str:
    """The experiment's comparison view, saved, and its URL."""
    save_view(client, experiment_id, EXPERIMENT_VIEW, "ffbench: runs by test accuracy", JOBS)
    return runs_url(base, experiment_id, EXPERIMENT_VIEW)


def sweep_links(client: MlflowClient, parent, job_ids: list[str], base: str) -> dict[str, str]:
    """{what: URL} of a sweep whose parent run is `parent`: its jobs in the runs table (a view
    of their own, the older sweeps' views pruned) and on the compare-runs page."""
    experiment_id = parent.info.experiment_id
    key = SWEEP_VIEW + parent.info.run_id
    search = f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    save_view(client, experiment_id, key, f"ffbench: {parent.info.run_name}", search)
    _prune_sweep_views(client, experiment_id)
    links = {"the sweep's runs by test accuracy": runs_url(base, experiment_id, key)}
    if job_ids:
        links[f"its {len(job_ids)} jobs compared"] = compare_url(base, experiment_id, job_ids)
    links[EXPERIMENT_LINK] = experiment_links(client, experiment_id, base)
    return links


def _prune_sweep_views(client: MlflowClient, experiment_id: str) -> None:
    tags = client.get_experiment(experiment_id).tags
    views = [k for k in tags if k.startswith(VIEW_TAG + SWEEP_VIEW)]
    views.sort(key=lambda k: json.loads(tags[k]).get("createdAt", 0), reverse=True)
    for stale in views[KEEP_SWEEP_VIEWS:]:
        client.delete_experiment_tag(experiment_id, stale)


def links_text(links: dict[str, str], tracking_uri: str, serving: bool = False) -> str:
    """The links, a line each, under a heading that says how to start the UI on a local
    store (unless `serving`: the caller starts it)."""
    local = not tracking_uri.startswith(("http://", "https://"))
    start = (
        f" (start it: mlflow ui --backend-store-uri {tracking_uri})"
        if local and not serving
        else ""
    )
    return "\n".join([f"MLflow UI{start}:", *(f"  {what}: {url}" for what, url in links.items())])


def store_links(client: MlflowClient, base: str) -> dict[str, str]:
    """For every experiment of the store with runs: its comparison view and, if it has one, its
    newest sweep's links."""
    links = {}
    for experiment in client.search_experiments():
        eid = experiment.experiment_id
        if not client.search_runs([eid], max_results=1):
            continue
        label = f"experiment {experiment.name!r}"
        newest = client.search_runs(
            [eid],
            f"tags.`{SWEEP_DIR}` != ''",
            max_results=1,
            order_by=["attributes.start_time DESC"],
        )
        if not newest:
            links[label] = experiment_links(client, eid, base)
            continue
        [parent] = newest
        jobs = client.search_runs([eid], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
        sweep = sweep_links(client, parent, [job.info.run_id for job in jobs], base)
        links[label] = sweep.pop(EXPERIMENT_LINK)  # the experiment's view, saved once
        for what, url in sweep.items():
            links[f"newest sweep ({parent.info.run_name}), {what}"] = url
    return links


def main(argv: list[str] | None = None) -> None:
    """`make ui`: the links into the UI about to start, for each experiment of the store."""
    parser = argparse.ArgumentParser(prog="python -m ffbench.ui", description=main.__doc__)
    parser.add_argument("tracking_uri", help="the store, e.g. sqlite:///outputs/mlflow.db")
    parser.add_argument("--ui-url", default=DEFAULT_UI, help=f"the UI's address ({DEFAULT_UI})")
    args = parser.parse_args(argv)
    if args.tracking_uri.startswith("sqlite:///"):
        if not Path(args.tracking_uri.removeprefix("sqlite:///")).exists():
            print(f"no runs yet: {args.tracking_uri} does not exist")
            return
    client = MlflowClient(args.tracking_uri)
    links = store_links(client, base_url(args.ui_url, args.tracking_uri))
    print(links_text(links, args.tracking_uri, serving=True) if links else "no runs yet")


if __name__ == "__main__":
    main()
