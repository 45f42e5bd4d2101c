"""Run records: the MLflow runs behind published figures, as text files a repository can hold.

    ffbench-records export DIR --tracking-uri URI --experiment NAME   one JSON file per run
    ffbench-records load DIR... --tracking-uri URI                   into a store, idempotently

A record holds what a figure or a reader needs of one job's run: its params (the resolved
config), its ffbench tags (commit, overrides, settings hash, ...), status, start and end, final
metrics, the history (step, value) of every metric logged more than once, and the dataset
inputs (name, digest, context, shape). It leaves out artifacts (checkpoints, logs, models) and
whatever names a folder or a process of the machine that ran it. One key a line, so that a
record diffs well; floats as Python writes them, so that they read back exactly.

Loaded into a store (`load`), records are runs again: the MLflow UI shows them, ffbench-report
reads them, and a sweep that skips finished jobs finds them by their settings hash, so that a
study goes on from its committed records on a fresh clone. Loading is a replay of the journal
the record amounts to (journal.py): a second load adds nothing.
"""

import argparse
import json
import sys
from pathlib import Path

from mlflow.entities import Metric, Param, Run, RunData, RunInfo, RunTag
from mlflow.tracking import MlflowClient

from ffbench import journal
from ffbench.tags import (
    BEAT,
    CHECKPOINT,
    ERROR,
    EVERY,
    JOURNAL_ID,
    OUTPUT_DIR,
    PROCESS,
    SKIPPED,
    SLURM_JOB_ID,
    SWEEP_DIR,
)

SUFFIX = ".json"
# Tags of the machine or the process, not of the result: where its folders were, which process
# ran it, its heartbeat. The skipped copies of a sweep (ffbench.skipped) are not recorded: the
# run they copy is.
MACHINE_TAGS = (OUTPUT_DIR, SWEEP_DIR, CHECKPOINT, PROCESS, BEAT, EVERY, SLURM_JOB_ID)
KEPT_MLFLOW_TAGS = ("mlflow.note.content",)


def _tags(tags: dict) -> dict:
    kept = {
        k: v
        for k, v in tags.items()
        if k not in MACHINE_TAGS and (not k.startswith("mlflow.") or k in KEPT_MLFLOW_TAGS)
    }
    if ERROR in kept:  # its first line: a traceback names the machine's folders
        kept[ERROR] = kept[ERROR].splitlines()[0]
    return kept


def _inputs(run) -> list[dict]:
    """The dataset inputs as journal rows, the source reduced to its file's name."""
    rows = []
    for given in run.inputs.dataset_inputs if run.inputs else []:
        dataset = given.dataset.to_dictionary()
        source = json.loads(dataset.get("source") or "{}")
        if "uri" in source:
            source["uri"] = Path(source["uri"]).name
        dataset |= {"source": json.dumps(source), "schema": None}
        context = {t.key: t.value for t in given.tags}.get("mlflow.data.context")
        rows.append({"dataset": dataset, "context": context})
    return sorted(rows, key=lambda row: str(row["context"]))


def record_of(client: MlflowClient, run, experiment: str) -> dict:
    """The record of `run`, one of `experiment`'s job runs."""
    history = {}
    for key in sorted(run.data.metrics):
        points = client.get_metric_history(run.info.run_id, key)
        if len(points) > 1:
            points = sorted(points, key=lambda m: (m.step, m.timestamp))
            history[key] = [[m.step, m.value] for m in points]
    return {
        "run_id": run.info.run_id,
        "run_name": run.info.run_name,
        "experiment": experiment,
        "status": run.info.status,
        "start_time": run.info.start_time,
        "end_time": run.info.end_time,
        "params": dict(run.data.params),
        "tags": _tags(run.data.tags),
        "metrics": dict(run.data.metrics),
        "history": history,
        "inputs": _inputs(run),
    }


def dumps(record: dict) -> str:
    """JSON with one key (or list item) a line below the top level, values compact."""

    def block(value, indent: str) -> str:
        if isinstance(value, dict) and value:
            rows = [f"{indent} {json.dumps(k)}: {json.dumps(v)}" for k, v in sorted(value.items())]
            return "{\n" + ",\n".join(rows) + f"\n{indent}}}"
        if isinstance(value, list) and value:
            rows = [f"{indent} {json.dumps(v, sort_keys=True)}" for v in value]
            return "[\n" + ",\n".join(rows) + f"\n{indent}]"
        return json.dumps(value)

    rows = [f" {json.dumps(k)}: {block(v, ' ')}" for k, v in record.items()]
    return "{\n" + ",\n".join(rows) + "\n}\n"


def file_name(record: dict) -> str:
    return f"{record['run_name']}-{record['run_id'][:8]}{SUFFIX}"


def read(folder: Path) -> list[dict]:
    """Every record in `folder` (and its subfolders), oldest run first."""
    found = [json.loads(path.read_text()) for path in sorted(Path(folder).rglob(f"*{SUFFIX}"))]
    return sorted(found, key=lambda record: (record["start_time"], record["run_id"]))


def points(record: dict) -> dict[str, list[list]]:
    """Every metric's (step, value) points: its history, else its final value at the last
    step (the step at which a job logs its final metrics: its last pass)."""
    last = max((p[0] for rows in record["history"].values() for p in rows), default=0)
    return {
        key: record["history"].get(key, [[last, value]]) for key, value in record["metrics"].items()
    }


# -- records as runs: in memory (for the report and docs/results.md), or in a store ----------


def as_run(record: dict) -> Run:
    """An MLflow Run object of the record, as a store's search would give it (no store)."""
    info = RunInfo(
        record["run_id"],
        "0",
        "",
        record["status"],
        record["start_time"],
        record["end_time"],
        "active",
        run_name=record["run_name"],
    )
    stamp = record["end_time"] or record["start_time"]
    steps = {key: rows[-1][0] for key, rows in points(record).items()}
    metrics = [Metric(k, v, stamp, steps[k]) for k, v in record["metrics"].items()]
    params = [Param(k, v) for k, v in record["params"].items()]
    tags = [RunTag(k, v) for k, v in record["tags"].items()]
    return Run(info, RunData(metrics, params, tags))


def as_journal(record: dict) -> list[dict]:
    """The journal (journal.py) a job that recorded this run would have written; its id is the
    run's own journal id, so that loading it twice finds the run loaded first."""
    journal_id = record["tags"].get(JOURNAL_ID) or f"record-{record['run_id']}"
    tags = {k: v for k, v in record["tags"].items() if k != JOURNAL_ID}
    start = {
        "op": "start",
        "uri": None,
        "experiment": record["experiment"],
        "run_name": record["run_name"],
        "tags": tags,
        "parent": None,
        "resume": None,
        "journal_id": journal_id,
        "time": record["start_time"],
    }
    rows = [
        [key, float(value), record["start_time"] + step, step]
        for key, found in points(record).items()
        for step, value in found
    ]
    records = [start, {"op": "params", "params": record["params"]}]
    records += [{"op": "metrics", "metrics": rows}, {"op": "inputs", "datasets": record["inputs"]}]
    if record["status"] != "RUNNING":
        records.append({"op": "end", "status": record["status"], "time": record["end_time"]})
    return records


class RecordJournal(journal.Journal):
    """A record, read as a journal by journal.replay; nothing is written back."""

    def __init__(self, record: dict):
        super().__init__(Path(file_name(record)))
        self._records = as_journal(record)

    def records(self) -> list[dict]:
        return self._records

    def append(self, op: str, **fields) -> dict:
        return {"op": op, **fields}


def load(client: MlflowClient, records: list[dict], experiment: str | None = None) -> int:
    """Put `records` into the store of `client` (into `experiment`, else each record's own);
    returns how many runs were created (0 for records loaded before)."""
    ids: dict[str, str] = {}

    def experiment_id(name: str) -> str:
        name = experiment or name
        if name not in ids:
            found = client.get_experiment_by_name(name)
            ids[name] = found.experiment_id if found else client.create_experiment(name)
        return ids[name]

    return sum(
        journal.replay(client, RecordJournal(record), experiment_id).created for record in records
    )


def export(client: MlflowClient, experiment: str, folder: Path) -> list[Path]:
    """Write a record of each job run of `experiment` (not the sweeps' parents, not skipped
    copies, not runs still RUNNING) into `folder`; returns the files written."""
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise LookupError(f"no experiment {experiment!r} in {client.tracking_uri}")
    runs = client.search_runs([found.experiment_id], max_results=50000)
    runs = [
        run
        for run in runs
        if "algo" in run.data.params
        and SKIPPED not in run.data.tags
        and run.info.status != "RUNNING"
    ]
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for run in runs:
        record = record_of(client, run, experiment)
        path = folder / file_name(record)
        path.write_text(dumps(record))
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="ffbench-records",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    verbs = parser.add_subparsers(dest="verb", required=True)
    out = verbs.add_parser("export", help="write the job runs of an experiment as records")
    out.add_argument("folder", type=Path)
    out.add_argument("--tracking-uri", required=True)
    out.add_argument("--experiment", required=True)
    into = verbs.add_parser("load", help="put records into a store (runs loaded before: skipped)")
    into.add_argument("folders", type=Path, nargs="+")
    into.add_argument("--tracking-uri", required=True)
    into.add_argument("--experiment", help="default: the experiment each record names")
    args = parser.parse_args(argv)
    client = MlflowClient(args.tracking_uri)
    if args.verb == "export":
        try:
            written = export(client, args.experiment, args.folder)
        except LookupError as err:
            sys.exit(f"ffbench-records: error: {err}")
        print(f"{len(written)} records of experiment {args.experiment!r} in {args.folder}")
        return
    missing = [str(f) for f in args.folders if not Path(f).is_dir()]
    if missing:
        sys.exit(f"ffbench-records: error: no folder {', '.join(missing)}")
    records = [record for folder in args.folders for record in read(folder)]
    created = load(client, records, args.experiment)
    print(f"{created} runs created, {len(records) - created} there already, in {args.tracking_uri}")
