"""`ffbench-sync FOLDER...`: record into MLflow what jobs journaled while their tracking
server was away (journal.py).

Every job writes what it sends to MLflow to mlflow-journal.jsonl in its Hydra folder. Given
job folders, or sweep folders (every job folder below them), this replays each journal into
the store the job recorded to (or --tracking-uri): the run is created once, or found again,
and only what the store lacks is added, so a second sync adds nothing. A sweep folder's
parent run is then counted and closed again, unless its sweep is still running.

  ffbench-sync outputs/multirun/2026-12-02/10-00-00-000000
  ffbench-sync outputs/runs/2026-12-02/10-00-00-000000 --tracking-uri http://127.0.0.1:5000
"""

import argparse
import os
import sys
from pathlib import Path

from mlflow.tracking import MlflowClient
from rich.console import Console

from ffbench import journal, liveness, store, sweep
from ffbench.errors import FFBenchError
from ffbench.tags import SWEEP_DIR

console = Console()


def journals(folders: list[Path]) -> list[Path]:
    """The journal files in `folders` and every folder below them, in name order."""
    found = []
    for folder in folders:
        if not folder.is_dir():
            raise FFBenchError(f"{folder} is not a folder: give job or sweep folders")
        found += sorted(p.resolve() for p in folder.rglob("mlflow-journal*.jsonl"))
    found = list(dict.fromkeys(found))  # a folder given twice, or inside another given
    if not found:
        raise FFBenchError(
            f"no {journal.NAME} in {', '.join(map(str, folders))}: give the Hydra folder of a "
            "job (outputs/runs/...) or of a sweep (outputs/multirun/...)"
        )
    return found


def sync_journal(path: Path, uri: str | None) -> tuple[journal.Replayed, MlflowClient]:
    """Replay one journal into `uri`, else the store its job recorded to."""
    records = journal.Journal(path)
    start = records.records()[:1]
    if not start or start[0]["op"] != "start":
        raise FFBenchError(f"{path} holds no run's start: not an ffbench journal")
    uri = uri or start[0]["uri"]
    store.ready_store(uri)
    client = MlflowClient(uri)
    launch_dir = str(path.parent)  # only where a new SQLite store keeps its artifacts

    def experiment_id(name: str) -> str:
        return store.experiment_named(client, name, launch_dir)

    return journal.replay(client, records, experiment_id), client


def close_sweeps(folders: list[Path], clients: dict[str, MlflowClient]) -> list[str]:
    """Count and close again the parent run of every sweep folder among `folders` whose
    sweep is over (its parent's heartbeat stopped, or it was closed); what was done."""
    done = []
    for folder in folders:
        if not (folder / "multirun.yaml").is_file():
            continue
        sweep_dir = folder.resolve()
        unclosed = sweep_dir / sweep.UNCLOSED
        given_up = unclosed.read_text().strip() if unclosed.is_file() else None
        for client in clients.values():
            parents = client.search_runs(
                [e.experiment_id for e in client.search_experiments()],
                f"tags.`{SWEEP_DIR}` = '{sweep_dir}'",
            )
            for parent in parents:
                run_id = parent.info.run_id
                if parent.info.status == "RUNNING" and run_id != given_up:
                    if run_id not in liveness.mark_lost(client, [parent.info.experiment_id]):
                        done.append(f"sweep {run_id}: still running, left alone")
                        continue
                if sweep.close_parent(client, run_id, sweep_dir, again=True) is not None:
                    status = client.get_run(run_id).info.status
                    done.append(f"sweep {run_id}: jobs counted again, {status}")
                if run_id == given_up:
                    unclosed.unlink()
    return done


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="ffbench-sync",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("folders", nargs="+", type=Path, metavar="FOLDER")
    parser.add_argument(
        "--tracking-uri", help="the store to record into; default: the one each job recorded to"
    )
    args = parser.parse_args(argv)
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # ours say it
    clients: dict[str, MlflowClient] = {}
    failed = 0
    try:
        paths = journals(args.folders)
    except FFBenchError as err:
        print(f"ffbench-sync: error: {err}", file=sys.stderr)
        sys.exit(1)
    for path in paths:
        try:
            done, client = sync_journal(path, args.tracking_uri)
        except Exception as err:
            failed += 1
            print(f"ffbench-sync: error: {path.parent}: {err}", file=sys.stderr)
            continue
        clients[client.tracking_uri] = client
        added = ", ".join(
            f"{n} {what}"
            for what in ("params", "metrics", "tags", "inputs", "files")
            if (n := getattr(done, what))
        )
        if done.created:
            added = f"run created; {added}"
        status = client.get_run(done.run_id).info.status
        if not done.ended:
            status += " (no end journaled)"
        line = f"{path.parent}: run {done.run_id} {status}: {added or 'nothing added'}"
        console.print(line, soft_wrap=True)
        for note in done.notes:
            console.print(f"{path.parent}: {note}", soft_wrap=True)
    for line in close_sweeps(args.folders, clients):
        console.print(line, soft_wrap=True)
    if failed:
        sys.exit(1)
