"""What Jupyter shows for deepworks' results: a run, a report, a comparison and a study each have a
``_repr_html_`` that draws a small card of its key figures in the notebook.

A card is one ``<div class="deepworks-inline">`` with its own style scoped to that class (a notebook
puts every output in one page, so a card must not restyle the others), figures as PNG data URIs,
and no script: it shows the same in JupyterLab, the classic notebook, VS Code and a notebook
rendered to HTML, and it stays a few tens of kilobytes. Every text that comes from a run (names,
class names, paths, findings) is escaped. This module draws the run's card; the report, the
comparison and the study draw theirs with its :func:`card`, :func:`figures_table` and
:func:`file_link`.

>>> run = deepworks.train("examples/configs/quickstart.yaml", train__epochs=2)  # doctest: +SKIP
>>> run  # in a notebook: the run's card  # doctest: +SKIP
"""

from __future__ import annotations

import html
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from deepworks.evaluation.figures import curves_metric, data_uri, learning_curves

__all__ = ["STYLE", "card", "figures_table", "file_link", "image", "cell", "run_card"]

esc = html.escape

# scoped to the card: Jupyter shows every output in one page
STYLE = (
    ".deepworks-inline{font:13px/1.4 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;color:#1d2125;"
    "border:1px solid #d0d7de;border-radius:6px;padding:.6em .9em;margin:.3em 0;max-width:1100px}"
    ".deepworks-inline h3{font-size:1.15em;margin:.1em 0 .3em}"
    ".deepworks-inline h4,.deepworks-inline h2{font-size:1.02em;margin:.8em 0 .3em;border:0}"
    ".deepworks-inline .meta{color:#57606a;margin:.1em 0 .5em}"
    ".deepworks-inline table{border-collapse:collapse;margin:.3em 0 .6em;font-size:12.5px}"
    ".deepworks-inline th,.deepworks-inline td{border:1px solid #d0d7de;padding:.15em .55em;text-align:left}"
    ".deepworks-inline th{background:#f6f8fa}.deepworks-inline td.num{text-align:right;"
    "font-variant-numeric:tabular-nums}"
    ".deepworks-inline img{max-width:100%;height:auto}.deepworks-inline figure{margin:.4em 0}"
    ".deepworks-inline figcaption,.deepworks-inline .caption{color:#57606a;font-size:12px}"
    ".deepworks-inline dl{display:grid;grid-template-columns:max-content auto;gap:.1em 1em;margin:.3em 0}"
    ".deepworks-inline dt{color:#57606a}.deepworks-inline dd{margin:0}"
    ".deepworks-inline ul.findings{list-style:none;padding:0;margin:.3em 0}"
    ".deepworks-inline li.finding{border-radius:5px;padding:.3em .6em;margin:.25em 0;border:1px solid #d0d7de}"
    ".deepworks-inline li.finding.warn{background:#fff1e5;border-left:4px solid #d1242f}"
    ".deepworks-inline li.finding.healthy{background:#dafbe1}"
    ".deepworks-inline li.finding .kind{font-weight:600;margin-right:.5em}"
    ".deepworks-inline .note{color:#57606a;font-style:italic}"
    ".deepworks-inline .warn{background:#fff8c5}"
    ".deepworks-inline .image-grid{display:flex;flex-wrap:wrap;gap:.4em}"
    ".deepworks-inline .image-grid img{max-width:96px;image-rendering:pixelated}"
)


def card(title: str, body: str, *, kind: str, meta: Sequence[str] = (), footer: str = "") -> str:
    """One card: ``kind`` and ``title`` (plain text, escaped here) over a line of ``meta`` (HTML,
    escaped by the caller), the ``body`` (HTML) and a ``footer`` (HTML)."""
    line = f'<p class="meta">{" · ".join(meta)}</p>' if meta else ""
    foot = f'<p class="caption">{footer}</p>' if footer else ""
    return (f'<div class="deepworks-inline"><style>{STYLE}</style>'
            f"<h3>{esc(kind)} <code>{esc(title)}</code></h3>{line}{body}{foot}</div>")


def cell(value: Any) -> str:
    """A table cell: a number right-aligned with 4 decimals (its full value in ``title``), a count
    with thousands separators, anything else as escaped text; ``-`` for nothing."""
    if value is None:
        return "<td>-</td>"
    if isinstance(value, bool):
        return f"<td>{'yes' if value else 'no'}</td>"
    if isinstance(value, int):
        return f'<td class="num">{value:,}</td>'
    if isinstance(value, float):
        text = f"{value:.4f}" if math.isfinite(value) and (value == 0 or abs(value) >= 1e-4) else f"{value:.3g}"
        return f'<td class="num" title="{value!r}">{text}</td>'
    return f"<td>{esc(str(value))}</td>"


def figures_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A table of ``rows`` under ``header`` (plain texts); cells as :func:`cell` writes them."""
    head = "".join(f"<th>{esc(str(h))}</th>" for h in header)
    body = "".join(f"<tr>{''.join(cell(v) for v in row)}</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def image(png: bytes, alt: str, caption: str = "") -> str:
    """A PNG figure as a data URI (the notebook fetches nothing)."""
    cap = f"<figcaption>{esc(caption)}</figcaption>" if caption else ""
    return f'<figure><img src="{data_uri(png)}" alt="{esc(alt)}">{cap}</figure>'


def file_link(path: str | Path, text: str | None = None) -> str:
    """A link to a file the card's page wrote (report.html, compare.html, study.html). Jupyter opens
    links relative to the notebook's folder, which is the kernel's working folder: a file under it
    gets a relative link, any other is named by its path (a browser will not follow a file:// link
    from a notebook served over HTTP)."""
    path = Path(path)
    shown = esc(text or str(path))
    try:
        relative = os.path.relpath(path.resolve(), Path.cwd().resolve())
    except ValueError:  # another drive
        relative = ".."
    if relative.startswith(".."):
        return f"<code>{shown}</code>"
    return f'<a href="{esc(Path(relative).as_posix())}" target="_blank"><code>{shown}</code></a>'


def _splits(summary: Mapping[str, Any]) -> str:
    """The final figures per split (summary.json's train, val and test), as the report's table."""
    splits = [s for s in ("train", "val", "test") if isinstance(summary.get(s), Mapping)]
    if not splits:
        return ""
    keys: list[str] = []
    for s in splits:
        keys += [k for k in summary[s] if k not in keys and k != "support"]
    rows = [(s, *(summary[s].get(k) for k in keys), summary[s].get("support")) for s in splits]
    return figures_table(["split", *keys, "samples"], rows)


def _findings(summary: Mapping[str, Any]) -> str:
    found = summary.get("diagnosis")
    if not isinstance(found, list) or not found:
        return ""
    kinds = [str(f.get("kind", "finding")).replace("_", " ") if isinstance(f, Mapping) else str(f) for f in found]
    return f'<p><strong>diagnosis:</strong> {esc("; ".join(kinds))}</p>'


def _parameters(model: Any) -> int | None:
    try:
        return sum(p.numel() for p in model.parameters())
    except (AttributeError, TypeError):
        return None


def run_card(run: Any) -> str:
    """The card of a :class:`~deepworks.pipeline.Run`: task, model, classes, epochs, the final
    figures per split, the diagnosis, the learning curves and where its report is."""
    summary = run.summary if isinstance(run.summary, Mapping) else {}
    config = run.config
    task = str(summary.get("task") or getattr(run.task, "name", "") or "")
    meta = [f"task: {esc(task)}"] if task else []
    params = _parameters(run.model)
    meta.append(f"model: {esc(str(config.model.name))}" + (f" ({params:,} parameters)" if params is not None else ""))
    if run.classes:
        names = ", ".join(str(c) for c in run.classes[:12]) + (", ..." if len(run.classes) > 12 else "")
        meta.append(f"{len(run.classes)} classes: {esc(names)}")
    if summary.get("epochs_run") is not None:
        epochs = f"{summary['epochs_run']} of {config.train.epochs} epochs"
        if summary.get("best_epoch") is not None:
            epochs += f", best {summary['best_epoch']}"
        if summary.get("stopped_early"):
            epochs += " (stopped early)"
        meta.append(esc(epochs))
    if isinstance(summary.get("wall_seconds"), (int, float)):
        meta.append(f"{summary['wall_seconds']:.1f} s" + (f" on {esc(str(summary['device']))}" if summary.get("device") else ""))
    body = [_findings(summary), _splits(summary) or '<p class="note">No final figures yet (summary.json).</p>']
    records = [r for r in run.history if isinstance(r, Mapping)]
    if any("train_loss" in r for r in records):
        monitor = summary.get("monitor") or config.train.monitor
        best = summary.get("best_epoch") if isinstance(summary.get("best_epoch"), int) else None
        stopped = summary.get("epochs_run") if summary.get("stopped_early") else None
        png = learning_curves(records, curves_metric(records, monitor, task), best_epoch=best, stopped_epoch=stopped,
                              monitor=monitor if monitor != "auto" else None, dpi=72)
        body.append(image(png, "learning curves", f"{len(records)} epoch(s) logged (metrics.jsonl)"))
    page = Path(run.dir) / "report.html"
    where = [f"run directory {file_link(run.dir)}"]
    where.append(f"report {file_link(page)}" if page.is_file()
                 else f"no report.html yet: <code>deepworks report {esc(str(run.dir))}</code> writes it")
    return card(str(config.name), "".join(body), kind="Run", meta=meta, footer=" · ".join(where))
