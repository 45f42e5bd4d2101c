"""What a job sends to MLflow, written first to its own folder, and replayed from there.

A tracking server that restarts or drops mid-training must not cost a run its result. Every
job appends each thing it records (its run's start, params, tags, metrics, dataset inputs,
files, end) as one JSON line to `mlflow-journal.jsonl` in its Hydra folder, before sending it.
`replay` brings any store up to date with a journal, idempotently: it creates the run once (or
finds it by its id, or by the journal's id in the tag `ffbench.journal_id`) and adds only what
the store lacks, so that a second replay adds nothing. A job whose server went away replays
its journal itself once the server answers again; `ffbench-sync FOLDER...` (sync.py) does it
for a job that gave up waiting.

Not journaled: heartbeats and system metrics (signs of a live process, meaningless later) and
the logged model (tracking.log_model), which needs the learner in memory.
"""

import json
import math
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from ffbench.tags import BEAT, ERROR, JOURNAL_ID

NAME = "mlflow-journal.jsonl"
BATCH = 1000  # metrics per log_batch request (MLflow's limit)


class Journal:
    """The journal file of one job, appended to line by line; `records` reads it back."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.file = None

    def append(self, op: str, **fields) -> dict:
        """Write one record (flushed to the OS at once: a killed process loses none of it)."""
        record = {"op": op, **fields}
        if self.file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            cut = self.path.exists() and not self.path.read_bytes().endswith(b"\n")
            self.file = open(self.path, "a", encoding="utf-8")
            if cut and self.path.stat().st_size:  # a line a kill cut short stays apart
                self.file.write("\n")
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        return record

    def sync_to_disk(self) -> None:
        """Past the OS's cache too (a lost node keeps what was synced)."""
        if self.file is not None:
            os.fsync(self.file.fileno())

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None

    def records(self) -> list[dict]:
        """Every complete record (a line cut short by a kill is left out)."""
        found = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                found.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return found


def start_record(
    uri: str, experiment: str, run_name: str, tags: dict, parent: str | None, resume
) -> dict:
    """The fields of a journal's first record: what creating (or reopening) the run needs."""
    return {
        "uri": uri,  # the store the job recorded to, where ffbench-sync sends it by default
        "experiment": experiment,
        "run_name": run_name,
        "tags": tags,
        "parent": parent,
        "resume": resume,  # the id of an earlier run that this job continues, or None
        # ordered by start: a run continued by a later job carries a later journal's id
        "journal_id": f"{int(time.time() * 1000):013d}-{uuid.uuid4().hex[:12]}",
        "time": int(time.time() * 1000),
    }


def metric_rows(metrics: dict, step: int, stamp_ms: int) -> list[list]:
    return [[key, float(value), stamp_ms, step] for key, value in metrics.items()]


def dataset_rows(inputs: list[tuple[Dataset, str]]) -> list[dict]:
    return [{"dataset": d.to_dictionary(), "context": c} for d, c in inputs]


def dataset_inputs(rows: list[dict]) -> list[DatasetInput]:
    return [
        DatasetInput(
            Dataset.from_dictionary(row["dataset"]),
            [InputTag("mlflow.data.context", row["context"])],
        )
        for row in rows
    ]


# -- sending one record to a run that exists: the live path, no checks ----------------------


def send(client: MlflowClient, run_id: str, record: dict) -> None:
    """Apply one record (not `start`) to run `run_id`."""
    op = record["op"]
    if op == "params":
        params = [Param(k, str(v)) for k, v in record["params"].items()]
        for i in range(0, len(params), 100):  # MLflow takes 100 params per request
            client.log_batch(run_id, params=params[i : i + 100])
    elif op == "metrics":
        model = record.get("model_id")  # the logged model the metrics belong to
        rows = [Metric(k, v, ts, step, model_id=model) for k, v, ts, step in record["metrics"]]
        for i in range(0, len(rows), BATCH):
            client.log_batch(run_id, metrics=rows[i : i + BATCH])
    elif op == "tags":
        client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in record["tags"].items()])
    elif op == "inputs":
        client.log_inputs(run_id, dataset_inputs(record["datasets"]))
    elif op == "text":
        client.log_text(run_id, record["text"], record["file"])
    elif op == "files":
        path = Path(record["path"])
        if path.is_dir():
            client.log_artifacts(run_id, str(path), record["dest"])
        elif path.is_file():
            client.log_artifact(run_id, str(path), record["dest"])
    elif op == "end":
        client.set_terminated(run_id, record["status"], record["time"])
    elif op != "created":
        raise ValueError(f"unknown journal record {op!r}")


# -- replaying a whole journal: the idempotent path ------------------------------------------


@dataclass
class Replayed:
    """What a replay found and added."""

    run_id: str
    created: bool = False
    params: int = 0
    metrics: int = 0
    tags: int = 0
    inputs: int = 0
    files: int = 0
    status: str | None = None  # the status it set, if it changed one
    ended: bool = False  # whether the journal holds the run's end
    notes: list[str] = field(default_factory=list)

    @property
    def added(self) -> int:
        return self.created + self.params + self.metrics + self.tags + self.inputs + self.files


def find_run(client: MlflowClient, records: list[dict], experiment_id) -> str | None:
    """The run a journal was recorded into: its recorded id if the store has it, the run it
    continued, or a run carrying its journal id; None if the store has none of them."""
    start = records[0]
    known = [r["run_id"] for r in records if r["op"] == "created"]
    for run_id in [*reversed(known), start["resume"]]:
        if run_id:
            try:
                run = client.get_run(run_id)
            except Exception:  # not in this store
                continue
            if run.info.lifecycle_stage == "active":
                return run_id
    found = client.search_runs(
        [experiment_id], f"tags.`{JOURNAL_ID}` = '{start['journal_id']}'", max_results=1
    )
    return found[0].info.run_id if found else None


def replay(client: MlflowClient, journal: Journal, experiment_id, live: bool = False) -> Replayed:
    """Bring the store of `client` up to date with `journal`; `experiment_id(name)` gives the
    id of an experiment by name, creating it if needed. Adds only what the store lacks.
    `live`: the job is still running (it reconnects): its run is set RUNNING again, should
    another process have marked it lost meanwhile."""
    records = journal.records()
    if not records or records[0]["op"] != "start":
        raise ValueError(f"{journal.path} does not start with a run's start record")
    start = records[0]
    done = _find_or_create(client, journal, records, experiment_id(start["experiment"]))
    run = client.get_run(done.run_id)
    later = run.data.tags.get(JOURNAL_ID, "")
    if later > start["journal_id"]:  # a later job continued the run: it holds the newer truth
        done.notes.append(f"continued by a later job (journal {later}): left as it is")
        return done
    journaled = _collect(records)
    new_params = {k: v for k, v in journaled["params"].items() if k not in run.data.params}
    if new_params:
        send(client, done.run_id, {"op": "params", "params": new_params})
    done.params = len(new_params)
    done.tags = _add_tags(client, run, start, journaled, live, done.created)
    done.metrics = _add_metrics(client, done.run_id, journaled["metrics"])
    done.inputs = _add_inputs(client, run, journaled["inputs"])
    for record in journaled["files"]:
        target = record["file"] if record["op"] == "text" else _artifact_name(record)
        if not _has_artifact(client, done.run_id, target):
            send(client, done.run_id, record)
            done.files += 1
    done.ended, done.status = journaled["end"] is not None, _end(client, run, journaled, live)
    return done


def _find_or_create(client: MlflowClient, journal: Journal, records: list[dict], exp_id):
    """The journal's run (find_run), created if the store has none (journaled as `created`)."""
    start = records[0]
    run_id = find_run(client, records, exp_id)
    if run_id is not None:
        return Replayed(run_id)
    tags = start["tags"] | {JOURNAL_ID: start["journal_id"]}
    if start["parent"]:
        tags["mlflow.parentRunId"] = start["parent"]
    run = client.create_run(exp_id, start["time"], tags, start["run_name"])
    journal.append("created", run_id=run.info.run_id, uri=client.tracking_uri)
    return Replayed(run.info.run_id, created=True)


def _add_tags(client: MlflowClient, run, start: dict, journaled: dict, live, created) -> int:
    """Set the journaled tags the run lacks or holds other values of; how many it changed."""
    run_id = run.info.run_id
    tags = journaled["tags"] | {JOURNAL_ID: start["journal_id"]}
    if start["parent"]:
        tags["mlflow.parentRunId"] = start["parent"]
    if not created:  # the beat of the job's start would make a live run look lost
        tags.pop(BEAT, None)
    if live:
        tags[BEAT] = f"{time.time():.0f}"
    changed = {k: v for k, v in tags.items() if run.data.tags.get(k) != str(v)}
    if changed:
        send(client, run_id, {"op": "tags", "tags": changed})
    ended = journaled["end"] is not None
    if (ended or live) and ERROR in run.data.tags and ERROR not in tags:
        client.delete_tag(run_id, ERROR)  # a "process lost" mark that the journal refutes
        return len(changed) + 1
    return len(changed)


def _add_metrics(client: MlflowClient, run_id: str, rows: list[list]) -> int:
    """Send the journaled metric points the store lacks; how many."""
    missing = []
    for key in {row[0] for row in rows}:
        stored = {
            _point(m.step, m.timestamp, m.value) for m in client.get_metric_history(run_id, key)
        }
        missing += [
            row for row in rows if row[0] == key and _point(row[3], row[2], row[1]) not in stored
        ]
    if missing:
        send(client, run_id, {"op": "metrics", "metrics": missing})
    return len(missing)


def _add_inputs(client: MlflowClient, run, rows: list[dict]) -> int:
    """Link the journaled dataset inputs the run lacks; how many."""
    have = {
        (i.dataset.digest, {t.key: t.value for t in i.tags}.get("mlflow.data.context"))
        for i in (run.inputs.dataset_inputs if run.inputs else [])
    }
    new = [r for r in rows if (r["dataset"]["digest"], r["context"]) not in have]
    if new:
        send(client, run.info.run_id, {"op": "inputs", "datasets": new})
    return len(new)


def _end(client: MlflowClient, run, journaled: dict, live: bool) -> str | None:
    """End the run as the journal did, or set a live job's run RUNNING again; the status set,
    None if it was right already."""
    end, run_id = journaled["end"], run.info.run_id
    if end is not None and (run.info.status != end["status"] or run.info.end_time != end["time"]):
        send(client, run_id, end)
        return end["status"]
    if end is None and live and run.info.status != "RUNNING":
        client.update_run(run_id, status="RUNNING")
        return "RUNNING"
    return None


def _collect(records: list[dict]) -> dict:
    """What a journal's records add up to: the params, the tags' last values, every metric
    row, the dataset inputs, the files, and the end record (or None)."""
    found = {"params": {}, "tags": dict(records[0]["tags"]), "metrics": [], "inputs": []}
    found |= {"files": [], "end": None}
    for record in records[1:]:
        op = record["op"]
        if op in ("params", "tags"):
            found[op] |= record[op]
        elif op == "metrics":
            found["metrics"] += record["metrics"]
        elif op == "inputs":
            found["inputs"] += record["datasets"]
        elif op in ("text", "files"):
            found["files"].append(record)
        elif op == "end":
            found["end"] = record
    return found


def _point(step: int, stamp: int, value: float) -> tuple:
    """A metric's point as the store and the journal both give it (NaN equal to NaN)."""
    return (step, stamp, "nan" if math.isnan(value) else value)


def _artifact_name(record: dict) -> str:
    """Where a `files` record's file or folder lands among the run's artifacts."""
    path = Path(record["path"])
    name = record["dest"] if path.is_dir() else f"{record['dest'] or ''}/{path.name}"
    return (name or "").strip("/")


def _has_artifact(client: MlflowClient, run_id: str, name: str) -> bool:
    parent, _, _ = name.rpartition("/")
    listed = client.list_artifacts(run_id, parent or None)
    return any(info.path == name for info in listed)
