"""`ffbench-report`: FF against BP from the MLflow store, as a table and pictures.

ffbench-report                                      experiment "ffbench" in ./outputs/mlflow.db
ffbench-report --sweep outputs/multirun/DATE/TIME   one sweep (its folder or its parent run id)
ffbench-report --tracking-uri http://127.0.0.1:5000 --experiment mnist --out figures/
ffbench-report --sweep FOLDER --select val_accuracy  also the best setting of each algorithm
ffbench-report --select val_accuracy --markdown results.md   the table as Markdown, with commands

Runs are grouped by the settings that vary between them (the keys of their command-line
overrides, valued from their params), seeds aside: one row per setting and algorithm, mean ±
standard deviation over its runs, FF's row next to BP's. Failed, killed or unfinished runs are
listed apart, never averaged; a RUNNING run whose heartbeat stopped is shown lost there, and
left RUNNING: a report reads the store and changes no run (liveness.py). sweep.SweepRun ends
every multirun with the same report, written into the sweep folder and logged to the parent
run.

--select METRIC keeps, for each algorithm, the setting with the best mean of METRIC over its
seeds (a validation metric: selecting on test would make the test figures optimistic), so that
FF and BP are compared each at its best after the same search (a study, conf/study/).
--markdown writes the table as a Markdown section for docs/results.md (benchmarks/results.py):
each row with the command that reruns it, its seeds and the commit that ran it.

FF runs also get a table of each layer's own test accuracy (predicting from that layer's
goodness alone) and of the range of layers that algo.predictor=layer_range kept, chosen on
validation: which layers are worth summing.
"""

import argparse
import functools
import os
import shlex
import statistics
import sys
from collections import Counter
from pathlib import Path

import mlflow
from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from rich.console import Console
from rich.table import Table
from rich.text import Text

from ffbench import liveness, store, ui
from ffbench.tags import ERROR, GIT_COMMIT, OVERRIDES, RESULT_RUN_ID, SKIPPED, SWEEP_DIR

ALGOS = ("ff", "bp", "bp_ckpt")  # row and colour order; any other algorithm follows
SEED = "trainer.seed"  # averaged over, never a setting
DASHES = ("-", "--", ":", "-.")  # the runs of one colour (algorithm) apart
# metric: (header, format, which of two values is better)
COLUMNS = {
    "test_accuracy": ("test acc", ".4f", max),
    "peak_saved_activations_mb": ("saved act MB", ".3f", min),
    "peak_rss_mb": ("peak RSS MB", ".1f", min),
    "peak_cuda_allocated_mb": ("CUDA alloc MB", ".1f", min),  # on CUDA only
    "train_time_s": ("train s", ".2f", min),
    "eval_time_s": ("eval s", ".2f", min),
    "matmul_ratio": ("of matmul", ".2f", max),  # trainer.matmul_reference
    "wall_time_s": ("wall s", ".2f", min),
}
MEMORY = {
    "peak_saved_activations_mb": "peak saved activations (MB)",
    "peak_rss_mb": "peak RSS (MB)",
}
TABLE_FILE = "comparison.txt"
TITLE = "FF against BP: mean ± standard deviation over seeds"
LAYER_TITLE = "Each FF layer alone: test accuracy from its own goodness, mean ± sd over seeds"
# The Markdown table's columns (docs/results.md): the selection's and the figures.
MARKDOWN = (
    "val_accuracy",
    "test_accuracy",
    "peak_saved_activations_mb",
    "peak_rss_mb",
    "train_time_s",
    "eval_time_s",
    "matmul_ratio",
)


def _overrides(run) -> dict[str, str]:
    """The run's command-line overrides as {key: value} (`+key=v` adds a key: same key)."""
    items = run.data.tags.get(OVERRIDES, "").split()
    return dict(item.lstrip("+").split("=", 1) for item in items if "=" in item)


def value(run, key: str) -> str:
    """The setting as the run used it: its param (the resolved config), else its override."""
    return run.data.params.get(key, _overrides(run).get(key, ""))


def swept(runs) -> list[str]:
    """Overridden keys whose value differs between runs, in the order first given; Hydra's
    own keys, the algorithm (first in every label) and the seed (averaged over) aside."""
    keys = dict.fromkeys(key for run in runs for key in _overrides(run))
    keys = [k for k in keys if "/" not in k and not k.startswith("hydra.")]
    keys = [k for k in keys if k not in ("algo", SEED)]
    return [k for k in keys if len({value(run, k) for run in runs}) > 1]


def label(run, keys: list[str], algo: bool = True) -> str:
    """In override syntax, ready to paste back: `algo=ff activation=gelu model.depth=2`."""
    keys = ["algo", *keys] if algo else keys
    return " ".join(f"{k}={value(run, k)}" for k in keys if value(run, k))


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _order(run, keys: list[str]) -> tuple:
    """Sort key: settings numerically where they are numbers (depth 2 before 16), then FF, BP."""
    values = [value(run, k) for k in keys]
    as_numbers = [(_number(v) is None, _number(v) or 0.0, v) for v in values]
    return (*as_numbers, *_algo_rank(value(run, "algo")))


def _algo_rank(algo: str) -> tuple:
    return (ALGOS.index(algo) if algo in ALGOS else len(ALGOS), algo)


def groups(runs, keys: list[str], algo_first: bool = False) -> dict[str, list]:
    """{label: its runs}, sorted by setting then algorithm (or algorithm then setting)."""

    def order(run) -> tuple:
        by_setting = _order(run, keys)
        return (_algo_rank(value(run, "algo")), by_setting) if algo_first else by_setting

    found: dict[str, list] = {}
    for run in sorted(runs, key=order):
        found.setdefault(label(run, keys), []).append(run)
    return found


def is_result(run) -> bool:
    return run.info.status == "FINISHED" and "test_accuracy" in run.data.metrics


def _measurements(runs, keys: list[str]) -> list:
    """One run per row and measurement. A skipped job (cli._reuse) carries the numbers of the
    run it points to: it stands for that run in another row (BP at another goodness) or in a
    rerun of the sweep, but beside that run, or beside another copy of it, it would count twice."""
    seen, kept = set(), []
    for run in sorted(runs, key=lambda r: SKIPPED in r.data.tags):  # originals first
        measured = run.data.tags.get(RESULT_RUN_ID, run.info.run_id)
        if (label(run, keys), measured) not in seen:
            seen.add((label(run, keys), measured))
            kept.append(run)
    return kept


def metric_values(runs, metric: str) -> list[float]:
    return [run.data.metrics[metric] for run in runs if metric in run.data.metrics]


def column(metric: str) -> tuple:
    """(header, format, better) of a metric: COLUMNS', else its name shortened (val_accuracy:
    val acc), four decimals, and higher is better unless it is a loss or a time."""
    if metric in COLUMNS:
        return COLUMNS[metric]
    header = metric.replace("_accuracy", " acc").replace("_", " ")
    return header, ".4f", min if metric.endswith(("_loss", "_s")) else max


def cell(values: list[float], fmt: str) -> str:
    if len(values) < 2:  # no spread to show
        return f"{values[0]:{fmt}}" if values else "-"
    return f"{statistics.mean(values):{fmt}} ± {statistics.stdev(values):{fmt}}"


def table(
    results, keys: list[str], metrics=COLUMNS, title: str = TITLE, algo_first: bool = False
) -> Table:
    """One row per setting and algorithm; the best mean of each column in bold green."""
    rows = groups(results, keys, algo_first)
    shown = [m for m in metrics if metric_values(results, m)]
    means = {
        m: [statistics.mean(v) for runs in rows.values() if (v := metric_values(runs, m))]
        for m in shown
    }
    best = {m: column(m)[2](means[m]) for m in shown if len(means[m]) > 1}
    out = Table(title=title)
    out.add_column("setting")
    out.add_column("runs", justify="right")
    for metric in shown:
        out.add_column(column(metric)[0], justify="right")
    labels = list(rows)
    for i, (name, runs) in enumerate(rows.items()):
        cells = []
        for metric in shown:
            values = metric_values(runs, metric)
            top = values and statistics.mean(values) == best.get(metric)
            cells.append(Text(cell(values, column(metric)[1]), style="bold green" if top else ""))
        # a rule under the last algorithm of a setting keeps FF and BP of one setting together
        following = rows[labels[i + 1]][0] if i + 1 < len(labels) else None
        last = following is None or label(following, keys, algo=False) != label(
            runs[0], keys, algo=False
        )
        out.add_row(name, str(len(runs)), *cells, end_section=last)
    return out


def select(results, keys: list[str], metric: str) -> list:
    """The runs of each algorithm's best setting: the best mean of `metric` over the setting's
    runs (its seeds). Of equal means the first setting in table order wins."""
    settings: dict[str, list] = {}
    for runs in groups(results, keys).values():
        if metric_values(runs, metric):
            settings.setdefault(value(runs[0], "algo"), []).append(runs)

    def mean(runs) -> float:
        return statistics.mean(metric_values(runs, metric))

    better = column(metric)[2]
    return [run for tried in settings.values() for run in better(tried, key=mean)]


def edges(results, chosen, keys: list[str]) -> list[str]:
    """A note for each selected number at the end of what its algorithm tried (the largest
    learning rate, say): the best may lie beyond it, and the search should be wider."""
    notes = []
    for runs in groups(chosen, keys, algo_first=True).values():
        algo = value(runs[0], "algo")
        for key in keys:
            tried = {_number(value(run, key)) for run in results if value(run, "algo") == algo}
            picked = _number(value(runs[0], key))
            if None in tried or len(tried) < 2 or picked not in (min(tried), max(tried)):
                continue
            end = "largest" if picked == max(tried) else "smallest"
            notes.append(f"algo={algo}: {key}={value(runs[0], key)} is the {end} value tried")
    return notes


# The Markdown form (docs/results.md): what a reader needs to rerun a row and trust it.


def command(runs) -> str:
    """The `ffbench` command that reruns these runs (one setting, its seeds): their overrides,
    each key once with its values comma-separated (then a sweep, -m: the seeds), the presets
    (+study=, +experiment=) first."""
    given: dict[str, list[str]] = {}
    for run in sorted(runs, key=lambda r: _number(value(r, SEED)) or 0.0):
        for item in run.data.tags.get(OVERRIDES, "").split():
            key, _, setting = item.partition("=")
            if setting not in given.setdefault(key, []):
                given[key].append(setting)
    presets = [k for k in given if k.startswith("+") and "." not in k]
    order = [*presets, *(k for k in given if k not in presets)]
    sweep = ["-m"] if any(len(given[k]) > 1 for k in order) else []
    return shlex.join(["ffbench", *sweep, *(f"{k}={','.join(given[k])}" for k in order)])


def seeds(runs) -> str:
    return ", ".join(sorted({value(run, SEED) for run in runs}, key=lambda v: _number(v) or 0.0))


def commits(runs) -> str:
    """The commit(s) of the code that made the runs, shortened; several if they differ. A
    skipped job's commit is not that of the run it copies, so copies are only counted."""
    measured = [run for run in runs if SKIPPED not in run.data.tags]
    found = sorted({run.data.tags.get(GIT_COMMIT, "unknown") for run in measured})
    text = ", ".join(f"`{c[:12]}{'-dirty' if c.endswith('-dirty') else ''}`" for c in found)
    copies = len(runs) - len(measured)
    return f"{text} (+{copies} copied from earlier runs)" if copies else text


def markdown(
    results, keys: list[str], title: str, where: str, metric: str | None = None, left_out: int = 0
) -> str:
    """A Markdown section: one row per setting and algorithm, or with `metric` each
    algorithm's selected setting (`select`), with the command that reruns it, its seeds, the
    MARKDOWN figures as mean ± sd over seeds and the commit. `where` says whose runs these are;
    `left_out` counts the failed and unfinished runs, never averaged."""
    chosen = select(results, keys, metric) if metric else results
    rows = groups(chosen, keys, algo_first=bool(metric))
    shown = [m for m in dict.fromkeys([metric, *MARKDOWN]) if m and metric_values(chosen, m)]
    what = "every setting, each algorithm's row next to the other's"
    if metric:
        tried = Counter(value(runs[0], "algo") for runs in groups(results, keys).values())
        counts = ", ".join(f"{algo} {n}" for algo, n in tried.items())
        what = (
            f"for each algorithm the setting with the best mean `{metric}` over its seeds "
            f"(settings tried: {counts}), selected on validation, never on test"
        )
    lines = [f"## {title}", "", f"{where}: {what}. Mean ± standard deviation over seeds.", ""]
    headers = ["algorithm", "command", "seeds", *(column(m)[0] for m in shown), "commit"]
    lines += [
        "| " + " | ".join(headers) + " |",
        "|---|---|---|" + "---:|" * len(shown) + "---|",
    ]
    for runs in rows.values():
        figures = [cell(metric_values(runs, m), column(m)[1]) for m in shown]
        row = [value(runs[0], "algo"), f"`{command(runs)}`", seeds(runs), *figures, commits(runs)]
        lines.append("| " + " | ".join(row) + " |")
    notes = edges(results, chosen, keys) if metric else []
    if notes:
        lines += [
            "",
            "At the end of the range tried (a wider search might do better): "
            + "; ".join(notes)
            + ".",
        ]
    lines += layer_markdown(chosen, keys)
    if left_out:
        lines += ["", f"{left_out} failed, killed or unfinished runs are not averaged."]
    return "\n".join(lines) + "\n"


# Each FF layer's own accuracy (ff.py's `layer{i}` predictions) and the layer range kept.


def depth(runs) -> int:
    """Layers whose own accuracy the runs recorded (0 for BP, or FF runs before it was)."""
    return max((i + 1 for run in runs for i in _layers(run)), default=0)


def _layers(run) -> list[int]:
    prefix = "test_accuracy_layer"
    names = [k.removeprefix(prefix) for k in run.data.metrics if k.startswith(prefix)]
    return [int(n) for n in names if n.isdigit()]


def kept(runs) -> str:
    """The range of layers algo.predictor=layer_range kept at the end of each run, 0-based,
    `first-last`; with how many runs kept it where they differ; empty without a range."""
    found = Counter(
        f"{run.data.metrics['layer_range_first']:.0f}-{run.data.metrics['layer_range_last']:.0f}"
        for run in runs
        if "layer_range_first" in run.data.metrics
    )
    if len(found) < 2:
        return next(iter(found), "")
    return ", ".join(f"{kept} ({n})" for kept, n in found.most_common())


def layer_rows(results, keys: list[str]) -> tuple[list[str], list[list[str]]]:
    """(headers, rows) of the per-layer table: one row per setting of the runs that recorded
    each layer's own accuracy, its layers' test accuracies and the range kept."""
    runs = [run for run in results if _layers(run)]
    layers = range(depth(runs))
    headers = ["setting", "runs", *(f"layer {i}" for i in layers), "range kept"]
    rows = [
        [
            name,
            str(len(group)),
            *(cell(metric_values(group, f"test_accuracy_layer{i}"), ".4f") for i in layers),
            kept(group),
        ]
        for name, group in groups(runs, keys).items()
    ]
    return headers, rows


def layer_table(results, keys: list[str]) -> Table:
    headers, rows = layer_rows(results, keys)
    out = Table(title=LAYER_TITLE)
    for index, header in enumerate(headers):
        out.add_column(header, justify="left" if index == 0 else "right")
    for row in rows:
        out.add_row(*row)
    return out


def layer_markdown(results, keys: list[str]) -> list[str]:
    """The per-layer table as Markdown lines (none if no run recorded it)."""
    headers, rows = layer_rows(results, keys)
    if not rows:
        return []
    lines = [
        "",
        f"{LAYER_TITLE}; range kept: algo.predictor=layer_range's, chosen on validation.",
        "",
    ]
    lines += ["| " + " | ".join(headers) + " |", "|---|" + "---:|" * (len(headers) - 1)]
    return lines + ["| " + " | ".join([f"`{row[0]}`", *row[1:]]) + " |" for row in rows]


def failures(runs, keys: list[str]) -> Table:
    out = Table(title="not averaged: failed, killed or unfinished runs")
    out.add_column("setting")
    out.add_column("seed", justify="right")
    out.add_column("status")
    out.add_column("reason", max_width=60, no_wrap=True, overflow="ellipsis")
    for run in sorted(runs, key=lambda r: _order(r, keys)):
        status, reason = run.info.status, run.data.tags.get(ERROR, "")
        lost = liveness.lost_reason(run)  # shown, not written: a reader changes no run
        if lost is not None:
            status, reason = "RUNNING, lost", lost
        out.add_row(label(run, keys), value(run, SEED), status, next(iter(reason.splitlines()), ""))
    return out


def _figure(columns: int = 1, width: float = 7):
    # A bare Figure draws with the Agg canvas: no GUI, no pyplot state shared with the caller.
    # Imported here so that `ffbench` does not pay for matplotlib before a sweep ends.
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, 4.5), layout="constrained")
    return figure, figure.subplots(1, columns, squeeze=False)[0]


def _colours(runs) -> dict[str, str]:
    algos = sorted({value(run, "algo") for run in runs}, key=_algo_rank)
    return {algo: f"C{i}" for i, algo in enumerate(algos)}


def _legend_label(algo: str, seen: set) -> str:
    """The algorithm once per picture; matplotlib leaves labels starting with _ out."""
    first = algo not in seen
    seen.add(algo)
    return algo if first else f"_{algo}"


def draw_epochs(history, runs, keys: list[str], path: Path) -> Path:
    """Validation accuracy per epoch, one line per run, named by its setting and seed (colour:
    the algorithm; dash: the run); `history(run)` gives its (step, value) points."""
    figure, [axes] = _figure()
    colours = _colours(runs)
    for i, run in enumerate(runs):
        points = history(run)
        axes.plot(
            [step for step, _ in points],
            [v for _, v in points],
            color=colours[value(run, "algo")],
            linestyle=DASHES[i % len(DASHES)],
            alpha=0.8,
            label=f"{label(run, keys)} seed {value(run, SEED)}",
        )
    axes.xaxis.get_major_locator().set_params(integer=True)
    axes.set(xlabel="epoch (MLflow step)", ylabel="validation accuracy")
    return _save(figure, axes, path)


def history(client: MlflowClient, run, key: str = "val_accuracy") -> list[tuple[int, float]]:
    """A metric's (step, value) points in the store, in step order."""
    found = sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.step)
    return [(m.step, m.value) for m in found]


def draw_time(results, path: Path) -> Path:
    figure, [axes] = _figure()
    colours, seen = _colours(results), set()
    for run in results:
        algo, metrics = value(run, "algo"), run.data.metrics
        if "wall_time_s" in metrics:
            x, y = metrics["wall_time_s"], metrics["test_accuracy"]
            axes.scatter(x, y, color=colours[algo], label=_legend_label(algo, seen))
    axes.set(xlabel="wall time (s)", ylabel="test accuracy", title="one point per run")
    return _save(figure, axes, path)


def draw_memory(results, keys: list[str], key: str, path: Path) -> Path:
    """One panel per memory figure against `key`, one line per setting of the other keys,
    mean over seeds with their standard deviation as error bars."""
    figure, panels = _figure(len(MEMORY), width=11)
    others = [k for k in keys if k != key]
    xs = sorted({float(value(run, key)) for run in results})
    for axes, (metric, title) in zip(panels, MEMORY.items(), strict=True):
        for name, runs in groups(results, others).items():
            by_x: dict[float, list[float]] = {}
            for run in runs:
                if metric in run.data.metrics:
                    by_x.setdefault(float(value(run, key)), []).append(run.data.metrics[metric])
            if by_x:
                x = sorted(by_x)
                mean = [statistics.mean(by_x[v]) for v in x]
                spread = [statistics.stdev(by_x[v]) if len(by_x[v]) > 1 else 0 for v in x]
                axes.errorbar(x, mean, yerr=spread, marker="o", capsize=3, label=name)
        if xs[0] > 0 and xs[-1] / xs[0] > 100:  # learning rates and the like
            axes.set_xscale("log")
        else:
            axes.set_xticks(xs)
        axes.set(xlabel=key, title=title)
    return _save(figure, panels[-1], path)


def _save(figure, axes, path: Path) -> Path:
    """PNG, or SVG written so that the same figure gives the same bytes (docs/results.md's)."""
    for each in figure.axes:
        each.grid(alpha=0.3)
    axes.legend(fontsize="x-small")
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".svg":
        import matplotlib

        with matplotlib.rc_context({"svg.hashsalt": "ffbench"}):
            figure.savefig(path, metadata={"Date": None})
    else:
        figure.savefig(path, dpi=100)
    return path


def split(runs) -> tuple[list[str], list, list]:
    """(the settings' keys, the results with each measurement once, the runs that failed,
    were killed or did not finish)."""
    keys = swept(runs)
    results = _measurements([run for run in runs if is_result(run)], keys)
    return keys, results, [run for run in runs if not is_result(run)]


def report(runs, client: MlflowClient, folder: Path, metric: str | None = None) -> list[Path]:
    """Print the tables and write them (comparison.txt) and the pictures into `folder`;
    returns the files written, none when there are no runs. With `metric`, a second table of
    each algorithm's best setting by it (`select`)."""
    if not runs:
        return []
    console = Console(record=True)
    if not console.is_terminal:  # a log file or a pipe: whole rows rather than wrapped cells
        console.width = 200
    keys, results, rest = split(runs)
    measured = [run for run in results if SKIPPED not in run.data.tags]
    if results:
        console.print(table(results, keys))
        if any(_layers(run) for run in results):
            console.print(layer_table(results, keys))
    if rest:
        console.print(failures(rest, keys))
    if results and metric:
        chosen = select(results, keys, metric)
        title = f"Selected: each algorithm's setting with the best mean {metric} over seeds"
        metrics = dict.fromkeys([metric, *COLUMNS])
        console.print(table(chosen, keys, metrics, title, algo_first=True))
        for note in edges(results, chosen, keys):
            console.print(f"at the end of the range tried: {note}", highlight=False)
    folder.mkdir(parents=True, exist_ok=True)
    text = folder / TABLE_FILE
    text.write_text(console.export_text())
    pictures = {}
    if measured:  # copies have no curve, and their point would hide the original's
        pictures["validation accuracy per epoch"] = draw_epochs(
            functools.partial(history, client), measured, keys, folder / "accuracy_per_epoch.png"
        )
        pictures["test accuracy against wall time"] = draw_time(
            measured, folder / "accuracy_vs_time.png"
        )
    if results:
        has_memory = any(m in run.data.metrics for run in results for m in MEMORY)
        for key in keys:
            numbers = {_number(value(run, key)) for run in results}
            if has_memory and len(numbers) > 1 and None not in numbers:
                short = key.rsplit(".", 1)[-1]  # model.depth: memory_vs_depth.png
                path = folder / f"memory_vs_{short}.png"
                pictures[f"peak memory against {short}"] = draw_memory(results, keys, key, path)
    for what, path in pictures.items():
        console.print(f"{what}: {path}", highlight=False, soft_wrap=True)
    return [text, *pictures.values()]


def load(uri: str, experiment: str, sweep: str | None) -> tuple[list, Run | None]:
    """The job runs of one sweep (and its parent run) or of one experiment (and None);
    LookupError if none."""
    if uri.startswith("sqlite:") and not Path(uri.removeprefix("sqlite:///")).exists():
        raise LookupError(f"no MLflow store at {uri.removeprefix('sqlite:///')}")
    mlflow.set_tracking_uri(uri)
    if sweep is None:
        found = MlflowClient(uri).get_experiment_by_name(experiment)
        if found is None:
            raise LookupError(f"no experiment {experiment!r} in {uri}")
        runs = mlflow.search_runs([found.experiment_id], output_format="list")
        runs = [run for run in runs if "algo" in run.data.params]  # not the sweeps' parents
        if not runs:
            raise LookupError(f"no runs in experiment {experiment!r} of {uri}")
        return runs, None
    if Path(sweep).is_dir():
        parents = mlflow.search_runs(
            filter_string=f"tags.`{SWEEP_DIR}` = '{Path(sweep).resolve()}'",
            search_all_experiments=True,
            output_format="list",
        )
        if not parents:
            raise LookupError(f"no sweep recorded for folder {sweep} in {uri}")
        parent = parents[0]
    else:
        try:
            parent = MlflowClient(uri).get_run(sweep)
        except MlflowException:
            raise LookupError(
                f"no sweep {sweep!r}: not a sweep folder nor a run id in {uri}"
            ) from None
    runs = mlflow.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
        output_format="list",
    )
    if not runs:
        raise LookupError(f"sweep {sweep} has no runs")
    return runs, parent


COMPARE_AT_MOST = 50  # runs on one compare-runs page (its URL grows with each run id)


def links(client: MlflowClient, runs, parent, base: str) -> dict[str, str]:
    """The MLflow UI's pages of the reported runs: the sweep's, or the experiment's."""
    ids = [run.info.run_id for run in runs]
    if parent is not None:
        return ui.sweep_links(client, parent, ids, base)
    experiment_id = runs[0].info.experiment_id
    found = {ui.EXPERIMENT_LINK: ui.experiment_links(client, experiment_id, base)}
    if len(ids) <= COMPARE_AT_MOST:
        found[f"its {len(ids)} runs compared"] = ui.compare_url(base, experiment_id, ids)
    return found


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ffbench-report",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--tracking-uri", help="default: $MLFLOW_TRACKING_URI, else ./outputs/mlflow.db"
    )
    parser.add_argument(
        "--experiment",
        default=os.environ.get("MLFLOW_EXPERIMENT_NAME", "ffbench"),
        help="default: $MLFLOW_EXPERIMENT_NAME, else ffbench",
    )
    parser.add_argument("--sweep", metavar="FOLDER_OR_RUN_ID", help="one sweep instead")
    parser.add_argument(
        "--out", type=Path, help="pictures: default the sweep folder, else outputs/report"
    )
    parser.add_argument(
        "--select",
        metavar="METRIC",
        help="also each algorithm's best setting by its mean METRIC over seeds (val_accuracy)",
    )
    parser.add_argument(
        "--markdown", metavar="FILE", type=Path, help="write the table as a Markdown section"
    )
    parser.add_argument("--title", help="the Markdown section's heading")
    parser.add_argument(
        "--ui-url", help=f"the MLflow UI in the links: default the server's, else {ui.DEFAULT_UI}"
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.select and args.select.startswith("test_"):
        parser.error(
            f"--select {args.select} would choose on the test set, whose figures must come from "
            "runs it did not choose: select on validation (--select val_accuracy)"
        )
    # An unreachable tracking server: a clear error within seconds, not minutes of retries.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    uri = store.tracking_uri(argparse.Namespace(uri=args.tracking_uri), ".")
    try:
        runs, parent = load(uri, args.experiment, args.sweep)
        if args.select and not any(args.select in run.data.metrics for run in runs):
            raise LookupError(f"no run recorded {args.select}: nothing to select on")
    except (LookupError, MlflowException) as err:
        message = str(err.args[0] if isinstance(err, LookupError) else err.message)
        sys.exit(f"ffbench-report: error: {message.splitlines()[0]}")
    folder = parent.data.tags.get(SWEEP_DIR) if parent else None
    client = MlflowClient(uri)
    report(runs, client, args.out or Path(folder or "outputs/report"), args.select)
    print(ui.links_text(links(client, runs, parent, ui.base_url(args.ui_url, uri)), uri))
    if args.markdown:
        where = f"sweep `{args.sweep}`" if args.sweep else f"experiment `{args.experiment}`"
        keys, results, rest = split(runs)
        title = args.title or f"FF against BP: {where}"
        text = markdown(
            results, keys, title, f"The runs of {where} in `{uri}`", args.select, len(rest)
        )
        args.markdown.write_text(text)
        print(f"Markdown: {args.markdown}")
