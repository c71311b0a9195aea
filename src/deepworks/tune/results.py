"""What a study leaves in its directory, read from the storage alone (any worker can write it):

- ``trials.csv``: one row per trial (number, state, values, parameters, run directory, retries);
- ``best.yaml``: the best trial's resolved config, ready for ``deepworks train`` (two metrics:
  the Pareto-optimal trial best on the first);
- ``study.json``: the study's summary (best trial, Pareto front, hyperparameter importances,
  counts per state);
- ``study.html``: one self-contained page (the run report's style and PNG data URIs) with the
  table, the importances, the optimisation history, parallel coordinates and one slice per key.
"""

from __future__ import annotations

import csv
import html
import io
import math
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from deepworks.runs import RunDir, atomic_write
from deepworks.tune.space import SearchSpace
from deepworks.version import __version__

__all__ = ["StudyResult", "write_results", "trial_rows", "importances", "render_study_page"]


def _state(trial: Any) -> str:
    if trial.user_attrs.get("surplus"):
        return "not needed"
    if trial.state.name == "FAIL":
        if trial.user_attrs.get("diverged"):
            return "diverged"
        if trial.user_attrs.get("invalid"):
            return "invalid"
        return "failed"
    return trial.state.name.lower()


def trial_rows(study: Any, space: SearchSpace, metrics: list[str]) -> list[dict[str, Any]]:
    """One dict per trial, in trial-number order (surplus trials, which never ran, left out)."""
    with warnings.catch_warnings():
        return _rows(study, space, metrics)


def _rows(study: Any, space: SearchSpace, metrics: list[str]) -> list[dict[str, Any]]:
    from optuna.storages import RetryFailedTrialCallback

    warnings.simplefilter("ignore")  # RetryFailedTrialCallback's helpers are flagged experimental
    retried_by: dict[int, int] = {}
    trials = study.get_trials(deepcopy=False)
    for t in trials:
        original = RetryFailedTrialCallback.retried_trial_number(t)
        if original is not None:
            retried_by[original] = t.number
    rows = []
    for t in trials:
        if t.user_attrs.get("surplus"):
            continue
        values = t.user_attrs.get("metrics") or {}
        row: dict[str, Any] = {"trial": t.number, "state": _state(t)}
        for m in metrics:
            row[m] = values.get(m)
        row.update({k: v for k, v in space.decode(t.params).items()})
        row["epochs"] = t.user_attrs.get("epochs") or (max(t.intermediate_values) if t.intermediate_values else None)
        row["retries"] = RetryFailedTrialCallback.retried_trial_number(t)
        row["retried_by"] = retried_by.get(t.number)
        row["run_dir"] = t.user_attrs.get("run_dir")
        row["error"] = t.user_attrs.get("diverged") or t.user_attrs.get("invalid")
        row["seconds"] = round(t.duration.total_seconds(), 2) if t.duration is not None else None
        rows.append(row)
    return rows


def _best(study: Any, metrics: list[str], directions: list[str]) -> tuple[Any, list[Any]]:
    complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    if not complete:
        return None, []
    if len(metrics) == 1:
        return study.best_trial, [study.best_trial]
    front = study.best_trials
    sign = 1 if directions[0] == "maximize" else -1
    return max(front, key=lambda t: sign * t.values[0]), sorted(front, key=lambda t: t.number)


def importances(study: Any, metrics: list[str]) -> dict[str, Any]:
    """fANOVA importance of each key for each metric (Optuna's default evaluator), or why not."""
    import optuna

    complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    out: dict[str, Any] = {}
    for i, m in enumerate(metrics):
        if len(complete) < 2:
            out[m] = {"error": f"{len(complete)} complete trial(s): importances need at least 2"}
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                found = optuna.importance.get_param_importances(
                    study, target=(lambda t, i=i: t.values[i]) if len(metrics) > 1 else None)
            out[m] = {k: float(v) for k, v in found.items()}
        except Exception as exc:  # e.g. every trial drew the same value of every key
            out[m] = {"error": str(exc).splitlines()[0][:200]}
    return out


def write_results(study: Any, root: Path, space: SearchSpace, metrics: list[str], directions: list[str], *,
                  storage_url: str, sampler: str, pruner: str, trials: int, seconds: float) -> dict[str, Any]:
    """Write trials.csv, best.yaml, study.json and study.html into ``root``; return the summary (a
    :class:`StudyResult`, which Jupyter shows inline)."""
    root = Path(root)
    rows = trial_rows(study, space, metrics)
    _write_csv(root / "trials.csv", rows)
    best, front = _best(study, metrics, directions)
    found = importances(study, metrics)
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["state"]] = counts.get(r["state"], 0) + 1
    summary: dict[str, Any] = {
        "study": study.study_name,
        "storage": storage_url,
        "directory": str(root),
        "metrics": metrics,
        "directions": directions,
        "sampler": sampler,
        "pruner": pruner,
        "trials": trials,
        "states": counts,
        "space": study.user_attrs.get("space"),
        "best": None,
        "importances": found,
        "seconds_this_worker": round(seconds, 1),
    }
    if best is not None:
        summary["best"] = {"trial": best.number, "values": dict(zip(metrics, best.values, strict=True)),
                           "params": space.decode(best.params), "run_dir": best.user_attrs.get("run_dir"),
                           "config": "best.yaml"}
        atomic_write(root / "best.yaml", _best_yaml(best, study.study_name, metrics))
    if len(metrics) == 2:
        summary["pareto"] = [{"trial": t.number, "values": dict(zip(metrics, t.values, strict=True)),
                              "params": space.decode(t.params)} for t in front]
    RunDir(root).write_json(root / "study.json", summary)
    atomic_write(root / "study.html", render_study_page(study, summary, rows, space, metrics, directions))
    return StudyResult(summary, rows)


class StudyResult(dict):
    """What :func:`deepworks.tune.tune` returns: the study's summary (``study.json``, a plain dict)
    that a Jupyter notebook shows as a card: the trials by state, the best trial's values and
    settings, the importances and the optimisation history (or the Pareto front)."""

    def __init__(self, summary: dict[str, Any], rows: list[dict[str, Any]] | None = None):
        super().__init__(summary)
        self.rows = list(rows or [])  # one per trial, as trials.csv holds them

    def _repr_html_(self) -> str:
        from deepworks.inline import card, figures_table, file_link, image

        e = html.escape
        metrics, directions = list(self["metrics"]), list(self["directions"])
        meta = [e(", ".join(f"{m} ({d})" for m, d in zip(metrics, directions, strict=True))),
                f"sampler {e(str(self['sampler']))}, pruner {e(str(self['pruner']))}",
                "trials: " + e(", ".join(f"{v} {k}" for k, v in self["states"].items()))]
        body = []
        best = self.get("best")
        if best:
            body.append(f"<h4>Best trial: {int(best['trial'])}</h4>")
            body.append(figures_table(["metric", "value"], list(best["values"].items())))
            body.append(figures_table(["key", "value"], [(k, v if isinstance(v, (int, float)) else _cell(v))
                                                         for k, v in best["params"].items()]))
        else:
            body.append('<p class="note">No trial has completed yet.</p>')
        for m, found in (self.get("importances") or {}).items():
            if found and "error" not in found:
                body.append(f"<h4>Importance for {e(m)}</h4>" + figures_table(["key", "importance"], list(found.items())))
        if any(r["state"] == "complete" for r in self.rows):
            if len(metrics) == 1:
                body.append(image(_history_png(self.rows, metrics[0], directions[0]), "optimisation history",
                                  "each trial's value; the line is the best so far"))
            else:
                front = {p["trial"] for p in self.get("pareto", [])}
                body.append(image(_pareto_png(self.rows, metrics, front), "Pareto front",
                                  f"{metrics[0]} against {metrics[1]}; red: trials no other beats on both"))
        root = Path(self["directory"])
        footer = f"the page: {file_link(root / 'study.html')}"
        if best:
            footer += f" · the best config: {file_link(root / 'best.yaml')} (<code>deepworks train</code> it)"
        return card(str(self["study"]), "".join(body), kind="Study", meta=meta, footer=footer)


def _best_yaml(best: Any, name: str, metrics: list[str]) -> str:
    values = ", ".join(f"{m} {v:.6g}" for m, v in zip(metrics, best.values, strict=True))
    head = (f"# the best trial of study {name}: trial {best.number} ({values})\n"
            f"# train it again with: deepworks train best.yaml\n")
    return head + (best.user_attrs.get("config") or "")


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    buffer = io.StringIO()
    fields = list(dict.fromkeys(k for r in rows for k in r)) or ["trial", "state"]
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: _cell(v) for k, v in r.items()})
    atomic_write(path, buffer.getvalue())


def _cell(value: Any) -> Any:
    if isinstance(value, (list, dict)):
        from deepworks.tune.space import _flow

        return _flow(value)
    return "" if value is None else value


# ------------------------------------------------------------------------------ the page


def _numeric(values: list[Any], dim: Any) -> tuple[list[float], list[str] | None]:
    """Positions on an axis: numbers as they are, choices as their index (with the labels)."""
    if dim.kind == "choice":
        labels = [str(_cell(c)) for c in dim.choices]
        index = {str(_cell(c)): i for i, c in enumerate(dim.choices)}
        return [float(index.get(str(_cell(v)), math.nan)) for v in values], labels
    return [float(v) if v is not None else math.nan for v in values], None


def _history_png(rows: list[dict[str, Any]], metric: str, direction: str) -> bytes:
    from deepworks.reporting.plots import figure_png, new_figure

    fig = new_figure(7.5, 3.4, left=0.8, bottom=0.55)
    ax = fig.add_subplot(1, 1, 1)
    done = [r for r in rows if r["state"] == "complete" and r.get(metric) is not None]
    pruned = [r for r in rows if r["state"] == "pruned" and r.get(metric) is not None]
    ax.scatter([r["trial"] for r in done], [r[metric] for r in done], s=22, color="#1f77b4", label="complete", zorder=3)
    if pruned:
        ax.scatter([r["trial"] for r in pruned], [r[metric] for r in pruned], s=22, marker="x", color="#999999",
                   label="pruned (value when stopped)", zorder=2)
    if done:
        order = sorted(done, key=lambda r: r["trial"])
        best, xs, ys = None, [], []
        for r in order:
            v = r[metric]
            if best is None or (v > best if direction == "maximize" else v < best):
                best = v
            xs.append(r["trial"])
            ys.append(best)
        ax.step(xs, ys, where="post", color="#d62728", label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="best")
    return figure_png(fig)


def _pareto_png(rows: list[dict[str, Any]], metrics: list[str], front: set[int]) -> bytes:
    from deepworks.reporting.plots import figure_png, new_figure

    fig = new_figure(6.5, 4.0, left=0.9, bottom=0.6)
    ax = fig.add_subplot(1, 1, 1)
    done = [r for r in rows if r["state"] == "complete"]
    on = [r for r in done if r["trial"] in front]
    off = [r for r in done if r["trial"] not in front]
    ax.scatter([r[metrics[1]] for r in off], [r[metrics[0]] for r in off], s=20, color="#9ecae1", label="trial")
    ax.scatter([r[metrics[1]] for r in on], [r[metrics[0]] for r in on], s=30, color="#d62728", label="Pareto front")
    ax.set_xlabel(metrics[1])
    ax.set_ylabel(metrics[0])
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return figure_png(fig)


def _parallel_png(rows: list[dict[str, Any]], space: SearchSpace, metric: str) -> bytes:
    from matplotlib import colormaps

    from deepworks.reporting.plots import figure_png, new_figure

    done = [r for r in rows if r["state"] == "complete" and r.get(metric) is not None]
    axes = [*space.keys, metric]
    fig = new_figure(max(6.0, 1.6 * len(axes)), 3.8, left=0.9, right=0.9, bottom=0.9)
    ax = fig.add_subplot(1, 1, 1)
    columns, labels = [], []
    for key in axes:
        if key == metric:
            pos, lab = [float(r[metric]) for r in done], None
        else:
            pos, lab = _numeric([r.get(key) for r in done], space[key])
            if space[key].log:
                pos = [math.log10(p) for p in pos]
        columns.append(pos)
        labels.append(lab)
    scaled = []
    for key, col, lab in zip(axes, columns, labels, strict=True):
        arr = np.asarray(col, dtype=float)
        lo, hi = (0.0, max(1.0, len(lab) - 1.0)) if lab else (np.nanmin(arr), np.nanmax(arr)) if len(arr) else (0.0, 1.0)
        scaled.append((arr - lo) / (hi - lo) if hi > lo else np.full_like(arr, 0.5))
    values = np.asarray([r[metric] for r in done], dtype=float)
    cmap = colormaps["viridis"]
    span = (values.max() - values.min()) if len(values) else 0.0
    for j in range(len(done)):
        shade = (values[j] - values.min()) / span if span > 0 else 0.5
        ax.plot(range(len(axes)), [s[j] for s in scaled], color=cmap(shade), alpha=0.8, linewidth=1.2)
    for i, (key, lab, col) in enumerate(zip(axes, labels, columns, strict=True)):
        ax.axvline(i, color="#555555", linewidth=0.8)
        if lab:
            for k, text in enumerate(lab):
                ax.text(i + 0.03, k / max(1.0, len(lab) - 1.0), text, fontsize=7, va="center")
        elif col:
            lo, hi = min(col), max(col)
            fmt = (lambda v: f"{10 ** v:.3g}") if key != metric and space[key].log else (lambda v: f"{v:.3g}")
            ax.text(i + 0.03, 0.0, fmt(lo), fontsize=7, va="center")
            ax.text(i + 0.03, 1.0, fmt(hi), fontsize=7, va="center")
    ax.set_xticks(range(len(axes)))
    ax.set_xticklabels(axes, rotation=20, ha="right", fontsize=8)
    ax.set_yticks([])
    ax.set_xlim(-0.1, len(axes) - 0.6)
    ax.set_title(f"complete trials, coloured by {metric} (yellow: highest)", fontsize=9)
    return figure_png(fig)


def _slices_png(rows: list[dict[str, Any]], space: SearchSpace, metric: str) -> bytes:
    from deepworks.reporting.plots import figure_png, new_figure

    done = [r for r in rows if r["state"] == "complete" and r.get(metric) is not None]
    n = len(space.keys)
    cols = min(3, n)
    lines = math.ceil(n / cols)
    fig = new_figure(3.3 * cols, 2.7 * lines, left=0.75, bottom=0.65, hspace=0.6, wspace=0.35)
    for i, key in enumerate(space.keys):
        ax = fig.add_subplot(lines, cols, i + 1)
        dim = space[key]
        pos, lab = _numeric([r.get(key) for r in done], dim)
        ax.scatter(pos, [r[metric] for r in done], c=[r["trial"] for r in done], cmap="Blues", edgecolors="#333333",
                   linewidths=0.4, s=24)
        if lab:
            ax.set_xticks(range(len(lab)))
            ax.set_xticklabels(lab, fontsize=7, rotation=15)
            ax.set_xlim(-0.5, len(lab) - 0.5)
        if dim.log:
            ax.set_xscale("log")
        ax.set_xlabel(key, fontsize=8)
        ax.set_ylabel(metric, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    return figure_png(fig)


def _importance_png(found: dict[str, float], metric: str) -> bytes:
    from deepworks.reporting.plots import figure_png, new_figure

    keys = list(found)[::-1]
    fig = new_figure(6.0, 0.5 + 0.35 * max(1, len(keys)), left=2.0, bottom=0.45, top=0.3)
    ax = fig.add_subplot(1, 1, 1)
    ax.barh(keys, [found[k] for k in keys], color="#1f77b4")
    ax.set_xlabel(f"importance for {metric} (fANOVA, sums to 1)", fontsize=8)
    ax.tick_params(labelsize=8)
    return figure_png(fig)


def render_study_page(study: Any, summary: dict[str, Any], rows: list[dict[str, Any]], space: SearchSpace,
                      metrics: list[str], directions: list[str]) -> str:
    """The study as one self-contained HTML page (no script, nothing fetched)."""
    from deepworks.reporting.html import CSP, STYLE
    from deepworks.reporting.sections import facts, figure, note, table

    e = html.escape
    parts: list[str] = []
    best = summary.get("best")
    parts.append("<section id=\"sec-summary\"><h2>Summary</h2>" + facts([
        ("study", summary["study"]), ("storage", summary["storage"]), ("metric", ", ".join(metrics)),
        ("direction", ", ".join(directions)), ("sampler", summary["sampler"]), ("pruner", summary["pruner"]),
        ("trials asked", summary["trials"]),
        ("trials by state", ", ".join(f"{k} {v}" for k, v in summary["states"].items())),
        ("best trial", best["trial"] if best else None),
        ("best values", ", ".join(f"{k} {v:.4f}" for k, v in best["values"].items()) if best else None),
        ("best config", "best.yaml (deepworks train best.yaml)" if best else None),
    ]) + "</section>")
    if best:
        parts.append("<section id=\"sec-best\"><h2>Best trial's values</h2>"
                     + table(["key", "value"], [(k, _cell(v)) for k, v in best["params"].items()]) + "</section>")
    complete = [r for r in rows if r["state"] == "complete"]
    figures = []
    if complete:
        if len(metrics) == 1:
            figures.append(figure(_history_png(rows, metrics[0], directions[0]), "fig-history",
                                  "optimisation history", "each trial's value; the line is the best so far"))
        else:
            front = {p["trial"] for p in summary.get("pareto", [])}
            figures.append(figure(_pareto_png(rows, metrics, front), "fig-pareto", "Pareto front",
                                  f"{metrics[0]} against {metrics[1]}; red: trials no other beats on both"))
        figures.append(figure(_parallel_png(rows, space, metrics[0]), "fig-parallel", "parallel coordinates",
                              "one line per complete trial through its value of each key"))
        figures.append(figure(_slices_png(rows, space, metrics[0]), "fig-slices", "slices",
                              f"{metrics[0]} against each key (darker: later trials)"))
    else:
        figures.append(note("No trial has completed yet: the figures appear once one has."))
    parts.append("<section id=\"sec-figures\"><h2>Optimisation</h2>" + "".join(figures) + "</section>")
    imp = []
    for m, found in summary["importances"].items():
        if "error" in found:
            imp.append(note(f"{m}: no importances ({found['error']})."))
        elif found:
            imp.append(figure(_importance_png(found, m), f"fig-importance-{e(m)}", f"importance for {m}"))
            imp.append(table(["key", f"importance for {m}"], list(found.items()), cls="compact"))
    parts.append("<section id=\"sec-importance\"><h2>Hyperparameter importance</h2>" + "".join(imp) + "</section>")
    headers = list(dict.fromkeys(k for r in rows for k in r))
    parts.append("<section id=\"sec-trials\"><h2>Trials</h2>"
                 + table(headers, [[_cell(r.get(h)) if not isinstance(r.get(h), (int, float)) or isinstance(r.get(h), bool)
                                    else r.get(h) for h in headers] for r in rows], cls="compact")
                 + "<p class=\"caption\">Each trial is a run directory (run_dir): deepworks report, evaluate and "
                   "predict work on it. retries: the trial this one runs again after its worker died; "
                   "retried_by: the trial that ran it again.</p></section>")
    written = time.strftime("%Y-%m-%d %H:%M:%S")
    name = summary["study"]
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{e(name)}: deepworks study</title><style>{STYLE}</style></head>\n<body>\n"
        f"<header><h1>Study {e(name)}</h1><p class=\"meta\">directory <code>{e(summary['directory'])}</code></p></header>\n"
        + "\n".join(parts)
        + f"\n<footer>Written {written} by deepworks {e(__version__)} (<code>deepworks tune</code>). "
        "The page is self-contained: it loads nothing from anywhere.</footer>\n</body></html>\n"
    )
