"""Runs side by side: the config keys that differ, the key results, and the learning curves.

>>> result = deepworks.compare(["runs/lr-small", "runs/lr-large"])   # doctest: +SKIP
>>> result["config"]                                                  # doctest: +SKIP
{'train.optimizer.lr': [0.001, 0.01]}
>>> result["html"]                                                    # doctest: +SKIP
'runs/compare/compare.html'

Each run is read from its directory alone: ``config.yaml`` (validated with
:func:`deepworks.config.load_config`, every default filled in), ``summary.json`` (the final
figures) and ``metrics.jsonl`` (one line per epoch, read with :meth:`RunDir.read_metrics`,
which stops at a line cut short by a kill). A run without ``config.yaml`` is not a run
directory: a :class:`CheckpointError`. Anything else missing or damaged (a run still training,
a truncated metrics log) leaves a gap in the tables or curves and a note that names the file.

The page is self-contained: the figures are PNG data URIs drawn on matplotlib's Agg canvas,
the style is inline, and nothing is fetched from anywhere.
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from deepworks.config import load_run_config
from deepworks.errors import CheckpointError, ConfigError
from deepworks.reporting.plots import _series, data_uri, figure_png
from deepworks.runs import RunDir, atomic_write, default_output

__all__ = ["compare", "Comparison", "flatten", "differing_keys", "learning_curves", "figure_data_uri", "value_text", "figure_text"]

# the figures of summary.json shown per task: (row name, split, metric)
TASK_METRICS = {
    "classification": [("val_accuracy", "val", "accuracy"), ("test_accuracy", "test", "accuracy")],
    "regression": [("val_r2", "val", "r2"), ("val_mae", "val", "mae"), ("test_r2", "test", "r2"),
                   ("test_mae", "test", "mae")],
}
RUN_FIGURES = ("best_epoch", "epochs_run", "wall_seconds")
HEADLINE = {"classification": "val_accuracy", "regression": "val_r2"}  # plotted beside the monitored metric


@dataclass
class _Run:
    """What one run directory holds, as far as it could be read."""

    name: str
    path: Path
    config: dict[str, Any]  # flattened: dotted key -> value
    summary: dict[str, Any] | None
    records: list[dict[str, Any]]  # metrics.jsonl, one per epoch
    task: str
    monitor: str
    notes: list[str] = field(default_factory=list)


def compare(runs: Sequence[str | Path], out: str | Path | None = None) -> Comparison:
    """Compare two or more run directories and write ``compare.html``.

    Returns ``{"runs": [...], "config": {key: [value per run]}, "metrics": {name: [value per
    run]}, "notes": [...], "html": path}`` (a :class:`Comparison`, which Jupyter shows inline): ``config`` holds the dotted config keys whose values
    differ (a key a run does not have, or has as null, is None), ``metrics`` the figures of each
    run's ``summary.json`` (val/test accuracy, or R² and MAE for regression runs; best_epoch,
    epochs_run, wall_seconds; None where a run has none), ``notes`` what could not be read.
    ``out`` is the page's path (default ``runs/compare/compare.html`` under the current directory;
    a directory gets ``compare.html`` inside it).
    """
    if isinstance(runs, (str, Path)):
        runs = [runs]
    paths = [Path(r) for r in runs]
    if len(paths) < 2:
        raise ConfigError(f"compare: expected at least two run directories, got {len(paths)}. "
                          "Fix: deepworks compare RUN_DIR RUN_DIR ...")
    for path in paths:  # every path is checked before anything is read or written
        _check_run_dir(path)
    loaded = [_load(path, name) for path, name in zip(paths, _names(paths), strict=True)]
    config = differing_keys([r.config for r in loaded])
    metrics = _metrics(loaded)
    notes = [f"{r.name}: {note}" for r in loaded for note in r.notes]
    figures = learning_curves(loaded)
    target = Path(out) if out is not None else default_output("compare", "compare.html")
    if target.is_dir():
        target = target / "compare.html"
    atomic_write(target, _render(loaded, config, metrics, notes, figures))
    return Comparison({
        "runs": [
            {"name": r.name, "path": str(r.path), "task": r.task, "monitor": r.monitor, "epochs_logged": len(r.records),
             "notes": r.notes}
            for r in loaded
        ],
        "config": config,
        "metrics": metrics,
        "notes": notes,
        "html": str(target),
    }, figures=figures)


class Comparison(dict):
    """What :func:`compare` returns: a plain dict (``runs``, ``config``, ``metrics``, ``notes``,
    ``html``) that a Jupyter notebook shows as a card: the figures side by side, the config keys
    that differ and the overlaid learning curves (``figures``, as compare.html draws them)."""

    def __init__(self, result: dict[str, Any], figures: Sequence[dict[str, str]] = ()):
        super().__init__(result)
        self.figures = list(figures)

    def _repr_html_(self) -> str:
        from deepworks.inline import card, figures_table, file_link

        e = html.escape
        names = [r["name"] for r in self["runs"]]
        body = ["<h4>Results (summary.json)</h4>",
                figures_table(["figure", *names], [(k, *vs) for k, vs in self["metrics"].items()])]
        if self["config"]:
            body += ["<h4>Config keys that differ</h4>",
                     figures_table(["key", *names], [(k, *(value_text(v) for v in vs)) for k, vs in self["config"].items()])]
        else:
            body.append("<p>The resolved configs are identical.</p>")
        body += [f'<figure><img alt="{e(f["title"])}" src="{f["png"]}"><figcaption>{e(f["title"])}</figcaption></figure>'
                 for f in self.figures]
        if self["notes"]:
            body.append('<ul class="note">' + "".join(f"<li>{e(n)}</li>" for n in self["notes"]) + "</ul>")
        return card(", ".join(names), "".join(body), kind=f"Comparing {len(names)} runs:",
                    footer=f"the page: {file_link(self['html'])}")


# ------------------------------------------------------------------------------- reading a run


def _check_run_dir(path: Path) -> None:
    if not path.exists():
        raise CheckpointError(f"{path}: no such run directory.")
    if not path.is_dir():
        raise CheckpointError(f"{path}: not a run directory (it is a file). Give the folder `deepworks train` wrote.")
    if not (path / "config.yaml").is_file():
        raise CheckpointError(
            f"{path}: not a deepworks run directory (no config.yaml). Give the folder `deepworks train` "
            "printed as its run directory."
        )


def _names(paths: list[Path]) -> list[str]:
    """Column names: each folder's name, the path as given where two names clash."""
    names = [p.resolve().name or str(p) for p in paths]
    names = [str(p) if names.count(n) > 1 else n for p, n in zip(paths, names, strict=True)]
    seen: dict[str, int] = {}
    unique = []
    for n in names:  # the same folder twice
        seen[n] = seen.get(n, 0) + 1
        unique.append(n if seen[n] == 1 else f"{n} ({seen[n]})")
    return unique


def _load(path: Path, name: str) -> _Run:
    run, notes = RunDir(path), []
    try:
        tree = load_run_config(run.config).model_dump(mode="json")
    except ConfigError as exc:  # e.g. a run of another deepworks version: compare it as written
        tree = read_yaml(run.config)
        notes.append(f"{run.config} does not validate with this version of deepworks ({_first_line(exc)}); "
                     "its keys are compared as written")
    summary = None
    if run.summary.exists():
        try:
            summary = run.read_json(run.summary)
        except CheckpointError as exc:
            notes.append(str(exc))
        if summary is not None and not isinstance(summary, dict):
            notes.append(f"{run.summary}: expected a JSON object, got {type(summary).__name__}; no final figures")
            summary = None
    else:
        notes.append(f"{run.summary} is missing (the run has not finished, or was stopped): no final figures")
    records = _read_metrics(run, notes)
    task = (summary or {}).get("task") or _task_from_data(run)
    if not isinstance(task, str) or task not in TASK_METRICS:
        task = "classification"
    monitor = (summary or {}).get("monitor") or _flat_get(tree, "train.monitor") or "auto"
    if monitor == "auto":
        monitor = "val_accuracy" if task == "classification" else "val_loss"
    return _Run(name, path, flatten(tree), summary, records, task, monitor, notes)


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        tree = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError, OSError) as exc:
        raise CheckpointError(f"{path}: not readable YAML ({_first_line(exc)}); the file was edited or truncated.") from None
    if not isinstance(tree, dict):
        raise CheckpointError(f"{path}: expected a mapping of keys (data:, model:, train:), got {type(tree).__name__}.")
    return tree


def _read_metrics(run: RunDir, notes: list[str]) -> list[dict[str, Any]]:
    """The epoch records before a line cut short (:meth:`RunDir.read_jsonl_prefix`), and a note
    when it kept fewer lines than the file has, or the file is missing."""
    path = run.metrics
    if not path.exists():
        notes.append(f"{path} is missing: no learning curves for this run")
        return []
    try:
        kept, lines = run.read_jsonl_prefix(path)
    except OSError as exc:
        notes.append(f"{path} is unreadable ({_first_line(exc)}): no learning curves for this run")
        return []
    if len(kept) < lines:
        where = f"the curves stop at epoch {kept[-1].get('epoch', len(kept))}" if kept else "no learning curves for this run"
        notes.append(
            f"{path}: line {len(kept) + 1} of {lines} is cut short or not a JSON object (a run killed while "
            f"writing it?); {where}"
        )
    elif not kept:
        notes.append(f"{path} is empty: no learning curves for this run")
    return kept


def _task_from_data(run: RunDir) -> str | None:
    try:
        info = json.loads(run.data.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    task = info.get("task") if isinstance(info, dict) else None  # {"name": "regression", ...}
    return task.get("name") if isinstance(task, dict) else None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:160] if text else type(exc).__name__


def _flat_get(tree: dict[str, Any], key: str) -> Any:
    node: Any = tree
    for part in key.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


# ------------------------------------------------------------------------------- the tables


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"train": {"optimizer": {"lr": 0.1}}}`` -> ``{"train.optimizer.lr": 0.1}``. Lists (e.g.
    ``model.filters``) and empty mappings are values of their own."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def differing_keys(configs: Sequence[dict[str, Any]]) -> dict[str, list[Any]]:
    """The flattened keys whose values are not the same in every config, in the configs' order,
    with each config's value (None where it lacks the key: a key absent and a key set to null
    both mean "not set"). Every key counts, ``name`` and ``seed`` included."""
    keys: dict[str, None] = {}
    for flat in configs:
        keys.update(dict.fromkeys(flat))
    differ = {}
    for key in keys:
        values = [flat.get(key) for flat in configs]
        if any(_canonical(v) != _canonical(values[0]) for v in values[1:]):
            differ[key] = values
    return differ


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _metrics(runs: Sequence[_Run]) -> dict[str, list[Any]]:
    tasks = {r.task for r in runs}
    rows: dict[str, list[Any]] = {}
    for task in ("classification", "regression"):
        if task in tasks:
            for name, split, metric in TASK_METRICS[task]:
                rows[name] = [_split_metric(r.summary, split, metric) for r in runs]
    for name in RUN_FIGURES:
        rows[name] = [(r.summary or {}).get(name) for r in runs]
    return rows


def _split_metric(summary: dict[str, Any] | None, split: str, metric: str) -> Any:
    figures = (summary or {}).get(split)
    return figures.get(metric) if isinstance(figures, dict) else None


def value_text(value: Any) -> str:
    """A config value or figure as one short line: YAML flow style, ``-`` for not set."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.3g}"
    if isinstance(value, (list, dict)):
        text = yaml.safe_dump(value, default_flow_style=True, width=10**6).strip()
        return text if len(text) <= 60 else text[:57] + "..."
    return str(value)


def figure_text(name: str, value: Any) -> str:
    """A figure of the results table: 4 decimals for metrics, 1 for seconds, whole epochs."""
    if value is None:
        return "-"
    if name == "wall_seconds":
        return f"{value:.1f}"
    if name in ("best_epoch", "epochs_run"):
        return str(value)
    return f"{value:.4f}" if isinstance(value, (int, float)) else str(value)


# ------------------------------------------------------------------------------- the figures


def _colours(n: int) -> list[str]:
    from matplotlib import colormaps
    from matplotlib.colors import to_hex

    palette = colormaps["tab10" if n <= 10 else "tab20"]
    return [to_hex(palette(i % palette.N)) for i in range(n)]


def _panels(runs: Sequence[_Run]) -> list[list[str]]:
    """Rows of plotted metrics: the losses, then each run's monitored metric (unless a loss) and its
    task's headline metric (val accuracy or R²), where some run logged them."""
    logged = {key for r in runs for record in r.records for key in record}
    metrics: dict[str, None] = {}
    for r in runs:
        for key in (r.monitor, HEADLINE[r.task]):
            if key in logged and not key.endswith("_loss"):
                metrics[key] = None
    losses = [key for key in ("train_loss", "val_loss") if key in logged]
    return [row for row in (losses, list(metrics)) if row]


def learning_curves(runs: Sequence[Any]) -> list[dict[str, str]]:
    """The learning curves of ``runs`` (objects with ``name``, ``records``, ``monitor``, ``task``
    and ``summary``) overlaid, one colour per run: a figure of train and val loss per epoch and
    one of the monitored metrics. Returns ``[{"title", "png"}]``, ``png`` a data URI; empty when
    no run logged an epoch."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    colours = _colours(len(runs))
    figures = []
    for row in _panels(runs):
        fig = Figure(figsize=(5.2 * len(row) + 1.8, 4), layout="constrained")
        FigureCanvasAgg(fig)
        axes = fig.subplots(1, len(row), squeeze=False)[0]
        for ax, key in zip(axes, row, strict=True):
            for run, colour in zip(runs, colours, strict=True):
                epochs, values = _series(run.records, key)
                if not epochs:
                    continue
                ax.plot(epochs, values, color=colour, marker="o" if len(epochs) <= 30 else None, markersize=3)
                best = (run.summary or {}).get("best_epoch")
                if key == run.monitor and best in epochs:  # the epoch that picked the best model
                    ax.plot([best], [values[epochs.index(best)]], marker="*", markersize=12, color=colour)
            ax.set_title(key)
            ax.set_xlabel("epoch")
            ax.grid(alpha=0.3)
            ax.xaxis.get_major_locator().set_params(integer=True)
        handles = [Line2D([], [], color=c, marker="o", markersize=3) for c in colours]
        fig.legend(handles, [r.name for r in runs], loc="outside right upper", title="run", fontsize="small")
        title = "loss per epoch" if row[0].endswith("_loss") else "monitored metrics per epoch (* best epoch)"
        figures.append({"title": title, "png": figure_data_uri(fig)})
    return figures


def figure_data_uri(fig: Any, dpi: int = 110) -> str:
    """A matplotlib figure as a ``data:image/png;base64,...`` URI, for a page with no other files."""
    return data_uri(figure_png(fig, dpi))


# ------------------------------------------------------------------------------- the page

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.7em; text-align: right; }
th:first-child, td:first-child { text-align: left; font-family: ui-monospace, monospace; }
thead th { background: #f4f4f4; }
.swatch { display: inline-block; width: 0.8em; height: 0.8em; margin-right: 0.4em; vertical-align: baseline; }
.notes li { color: #8a5300; }
figure { margin: 0.5em 0 1.5em; }
figcaption { color: #555; font-size: 0.9em; }
img { max-width: 100%; display: block; }
"""


def _table(header: str, runs: Sequence[_Run], colours: list[str], rows: list[tuple[str, list[str]]]) -> str:
    e = html.escape
    head = "".join(
        f'<th><span class="swatch" style="background:{c}"></span>{e(r.name)}</th>' for r, c in zip(runs, colours, strict=True)
    )
    body = "".join(f"<tr><td>{e(k)}</td>{''.join(f'<td>{e(v)}</td>' for v in values)}</tr>" for k, values in rows)
    return f"<table><thead><tr><th>{e(header)}</th>{head}</tr></thead><tbody>{body}</tbody></table>"


def _render(
    runs: Sequence[_Run], config: dict[str, list[Any]], metrics: dict[str, list[Any]], notes: list[str],
    figures: list[dict[str, str]],
) -> str:
    e = html.escape
    colours = _colours(len(runs))
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>deepworks compare: {e(', '.join(r.name for r in runs))}</title>",
        f"<style>{STYLE}</style></head><body>",
        f"<h1>Comparing {len(runs)} runs</h1>",
        _table("run", runs, colours, [
            ("directory", [str(r.path) for r in runs]),
            ("task", [r.task for r in runs]),
            ("monitor", [r.monitor for r in runs]),
            ("epochs logged", [str(len(r.records)) for r in runs]),
        ]),
        "<h2>Config keys that differ</h2>",
        _table("key", runs, colours, [(k, [value_text(v) for v in vs]) for k, vs in config.items()])
        if config else "<p>The resolved configs are identical.</p>",
        "<h2>Results (summary.json)</h2>",
        _table("figure", runs, colours, [(k, [figure_text(k, v) for v in vs]) for k, vs in metrics.items()]),
        "<h2>Learning curves (metrics.jsonl)</h2>",
    ]
    if figures:
        parts += [f'<figure><img alt="{e(f["title"])}" src="{f["png"]}"><figcaption>{e(f["title"])}</figcaption></figure>'
                  for f in figures]
    else:
        parts.append("<p>No run has logged an epoch yet.</p>")
    if notes:
        parts += ["<h2>Notes</h2>", '<ul class="notes">', *(f"<li>{e(n)}</li>" for n in notes), "</ul>"]
    parts.append("</body></html>\n")
    return "\n".join(parts)
