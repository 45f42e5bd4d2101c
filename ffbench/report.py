"""The end of a sweep over `model.depth`: memory against depth as a picture and a table.

Called by tracking.SweepRun with the sweep's child runs. It draws when the children swept
`model.depth` (more than one value) and recorded the memory figures; each line is one setting
of the other swept overrides (`algo=bp`, say). Jobs that failed have no figures: the table
says so and the picture shows what finished.
"""

from pathlib import Path

from rich.console import Console
from rich.table import Table

PICTURE = "memory_vs_depth.png"
PANELS = (
    ("peak_saved_activations_mb", "peak saved activations (MB)"),
    ("peak_rss_mb", "peak RSS (MB)"),
)


def _overrides(run) -> dict[str, str]:
    pairs = (item.split("=", 1) for item in run.data.tags.get("ffbench.overrides", "").split())
    return {key: value for key, value in pairs}


def _label(run, varying: list[str]) -> str:
    overrides = _overrides(run)
    return " ".join(f"{key}={overrides.get(key, '')}" for key in varying) or "runs"


def depth_sweep(children) -> tuple[list, list[str]] | None:
    """(children sorted by depth, the other overrides that vary), or None if not a depth sweep."""
    depths = {run.data.params.get("model.depth") for run in children}
    has_figures = any(PANELS[0][0] in run.data.metrics for run in children)
    if len(depths) < 2 or not has_figures:
        return None
    keys = sorted({key for run in children for key in _overrides(run)} - {"model.depth"})
    varying = [key for key in keys if len({_overrides(r).get(key) for r in children}) > 1]
    ordered = sorted(
        children, key=lambda r: (_label(r, varying), int(r.data.params["model.depth"]))
    )
    return ordered, varying


def draw(children, varying: list[str], path: Path) -> Path:
    """Write the PNG: one panel per figure, one line per setting, against depth."""
    from matplotlib.figure import Figure  # the Agg canvas, no GUI and no pyplot state

    figure = Figure(figsize=(10, 4), layout="constrained")
    for axes, (metric, title) in zip(figure.subplots(1, len(PANELS)), PANELS, strict=True):
        lines: dict[str, list[tuple[int, float]]] = {}
        for run in children:
            if metric in run.data.metrics:  # a failed job has no point
                point = (int(run.data.params["model.depth"]), run.data.metrics[metric])
                lines.setdefault(_label(run, varying), []).append(point)
        for label, points in lines.items():
            axes.plot(*zip(*points, strict=True), marker="o", label=label)
        axes.set_xticks(sorted({int(run.data.params["model.depth"]) for run in children}))
        axes.set_xlabel("model.depth (hidden layers)")
        axes.set_title(title)
        axes.grid(alpha=0.3)
        axes.legend(fontsize="small")
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    return path


COLUMNS = {
    "peak_saved_activations_mb": "saved act MB",
    "peak_rss_mb": "peak RSS MB",
    "peak_cuda_allocated_mb": "CUDA alloc MB",
}


def table(children, varying: list[str]) -> Table:
    out = Table(title="memory against depth", show_header=True)
    shown = [k for k in COLUMNS if any(k in run.data.metrics for run in children)]
    out.add_column("setting")
    for column in ("depth", *(COLUMNS[k] for k in shown), "status"):
        out.add_column(column, justify="right")
    for run in children:
        m = run.data.metrics
        cells = [f"{m[k]:.2f}" if k in m else "-" for k in shown]
        depth = run.data.params["model.depth"]
        out.add_row(_label(run, varying), depth, *cells, run.info.status)
    return out


def report(children, folder: Path, console: Console | None = None) -> Path | None:
    """Picture under `folder` and table on the terminal; the picture's path, None if no sweep."""
    found = depth_sweep(children)
    if found is None:
        return None
    ordered, varying = found
    (console or Console()).print(table(ordered, varying))
    return draw(ordered, varying, folder / PICTURE)
