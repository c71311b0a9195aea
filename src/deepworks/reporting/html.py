"""``report.html``: one self-contained page per run directory.

The page carries everything it shows: figures are PNG data URIs, the style is one small
inline ``<style>``, and there is no script, font or link to fetch (a Content-Security-Policy
meta tag forbids any), so it opens offline and can be mailed. Its sections come from
:data:`deepworks.reporting.sections.SECTIONS` in page order; a section whose inputs are missing
says so in a short note, and one that fails says that instead of stopping the page.

>>> from deepworks.reporting import write_report
>>> write_report("runs/quickstart-20261124-101500")  # doctest: +SKIP
Report('runs/quickstart-20261124-101500/report.html')

The path it returns is a :class:`Report`: a :class:`pathlib.Path` that a Jupyter notebook shows
as the page's key sections (the diagnosis, the learning curves and the final metrics).
"""

from __future__ import annotations

import html
import time
from pathlib import Path

from deepworks.errors import DeepworksError
from deepworks.inline import card, file_link
from deepworks.reporting.context import RunContext, load_context
from deepworks.reporting.sections import Section, key_sections, sections_for
from deepworks.runs import atomic_write
from deepworks.version import __version__

__all__ = ["write_report", "render_page", "Report", "inline_report"]

FILENAME = "report.html"

STYLE = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;color:#1d2125;
  max-width:1180px;margin:0 auto;padding:1.2em 1.5em 3em;background:#fff}
h1{font-size:1.6em;margin:.2em 0}h2{font-size:1.25em;border-bottom:1px solid #d0d7de;padding-bottom:.2em;margin-top:1.8em}
h3{font-size:1.02em;margin:1.1em 0 .4em}
.meta{color:#57606a;margin:.2em 0 1em}
nav ol{columns:3;margin:.4em 0;padding-left:1.4em}nav a{color:#0969da;text-decoration:none}
pre{background:#f6f8fa;border:1px solid #d0d7de;border-radius:6px;padding:.8em;overflow:auto;font-size:12.5px}
table{border-collapse:collapse;margin:.4em 0 .8em;font-size:13px}
th,td{border:1px solid #d0d7de;padding:.25em .6em;text-align:left;vertical-align:top}
th{background:#f6f8fa}td.num{text-align:right;font-variant-numeric:tabular-nums}
table.compact td,table.compact th{padding:.15em .5em}
dl{display:grid;grid-template-columns:max-content auto;gap:.15em 1em;margin:.4em 0 .8em}dt{color:#57606a}dd{margin:0}
figure{margin:.6em 0 1em}figure img{max-width:100%;height:auto;border:1px solid #eaeef2}
figcaption,.caption{color:#57606a;font-size:12.5px;margin-top:.3em}
.image-grid{display:flex;flex-wrap:wrap;gap:.6em}.image-grid figure{margin:0;text-align:center;min-width:96px}
.image-grid img{max-width:128px;height:auto;image-rendering:pixelated;border:1px solid #d0d7de}
.image-grid figcaption{font-size:11.5px;line-height:1.3}
summary{cursor:pointer;margin:.3em 0}
.note{color:#57606a;font-style:italic}
.warn{background:#fff8c5;border-left:4px solid #bf8700;padding:.4em .7em;font-style:normal;color:#1d2125}
.problems{background:#fff8c5;border:1px solid #d4a72c;border-radius:6px;padding:.5em 1em}
.problems ul{margin:.3em 0;padding-left:1.3em}
ul.findings{list-style:none;padding:0}
li.finding{border-radius:6px;padding:.5em .8em;margin:.4em 0;border:1px solid #d0d7de}
li.finding.warn{background:#fff1e5;border-color:#fb8f44;border-left:5px solid #d1242f}
li.finding.healthy{background:#dafbe1;border-color:#4ac26b}
li.finding .kind{font-weight:600;margin-right:.6em}li.finding .advice{display:block;margin-top:.2em}
li.finding .evidence{color:#424a53}
footer{margin-top:3em;color:#57606a;font-size:12px}
"""

# the page may use its own inline style and data: images, and fetch nothing at all
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


def _render_section(section: Section, ctx: RunContext) -> str | None:
    try:
        body = section.render(ctx)
    except Exception as exc:  # a damaged file must not cost the rest of the page
        body = (f'<p class="warn">This section could not be drawn: {html.escape(type(exc).__name__)}: '
                f"{html.escape(str(exc).splitlines()[0][:300] if str(exc) else '')}</p>")
    if body is None:
        return None
    return f'<section id="sec-{html.escape(section.name)}"><h2>{html.escape(section.title)}</h2>{body}</section>'


def render_page(ctx: RunContext) -> str:
    """The whole page for a loaded run context."""
    rendered = [(s, _render_section(s, ctx)) for s in sections_for(ctx.task)]
    rendered = [(s, body) for s, body in rendered if body is not None]
    name = ctx.config.name if ctx.config is not None else ctx.path.name
    toc = "".join(f'<li><a href="#sec-{html.escape(s.name)}">{html.escape(s.title)}</a></li>' for s, _ in rendered)
    problems = ""
    if ctx.problems:
        items = "".join(f"<li><code>{html.escape(f)}</code>: {html.escape(why)}</li>" for f, why in ctx.problems.items())
        problems = (f'<div class="problems" id="problems"><strong>This report is incomplete.</strong> '
                    f"Some of the run's files are missing or damaged; the sections that need them say so.<ul>{items}</ul></div>")
    s = ctx.summary or {}
    meta = [f"run directory <code>{html.escape(str(ctx.path))}</code>", f"task: {html.escape(ctx.task)}"]
    if s.get("test"):
        meta.append("finished")
    elif ctx.metrics:
        meta.append(f"{len(ctx.metrics)} epoch(s) logged, not finished")
    written = time.strftime("%Y-%m-%d %H:%M:%S")
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(name)}: deepworks report</title><style>{STYLE}</style></head>\n<body>\n"
        f"<header><h1>{html.escape(name)}</h1><p class=\"meta\">{' · '.join(meta)}</p></header>\n"
        f"<nav><ol>{toc}</ol></nav>\n{problems}\n"
        + "\n".join(body for _, body in rendered)
        + f"\n<footer>Written {written} by deepworks {html.escape(__version__)} (<code>deepworks report</code>). "
        "The page is self-contained: it loads nothing from anywhere.</footer>\n</body></html>\n"
    )


def write_report(run_dir: str | Path) -> Report:
    """Write ``RUN_DIR/report.html`` for a run directory (finished or not) and return its path (a
    :class:`Report`, which Jupyter shows inline).

    Only ``config.yaml`` is required; anything else missing or damaged is named on the page.
    Not a run directory: :class:`~deepworks.errors.CheckpointError`.
    """
    ctx = load_context(run_dir)
    path = ctx.path / FILENAME
    atomic_write(path, render_page(ctx))
    return Report(path)


class Report(type(Path())):  # PosixPath or WindowsPath: pathlib.Path itself cannot be subclassed before 3.12
    """The path of a run's ``report.html``: a :class:`pathlib.Path` in every way (``read_text``,
    ``==``, ``str``, ``os.fspath``), which a Jupyter notebook shows as the page's key sections
    (:func:`inline_report`). A path derived from it (``.parent``, ``/ "x"``) shows as a plain path."""

    def __repr__(self) -> str:
        return f"Report({str(self)!r})"

    def _repr_html_(self) -> str | None:
        if self.name != FILENAME or not (self.parent / "config.yaml").is_file():
            return None  # not a report's path: Jupyter shows the text
        return inline_report(self.parent)


def inline_report(run_dir: str | Path) -> str:
    """The report's key sections (:func:`~deepworks.reporting.sections.key_sections`: the diagnosis,
    the learning curves and the final metrics) as a card for a notebook, with a link to the page."""
    try:
        ctx = load_context(run_dir)
    except DeepworksError as exc:
        return card(Path(run_dir).name, f'<p class="warn">{html.escape(str(exc))}</p>', kind="Report")
    bodies = [body for body in (_render_section(s, ctx) for s in key_sections(ctx.task)) if body is not None]
    name = ctx.config.name if ctx.config is not None else ctx.path.name
    meta = [f"task: {html.escape(ctx.task)}"]
    if ctx.problems:
        meta.append(f"incomplete: {html.escape(', '.join(ctx.problems))} missing or damaged")
    page = ctx.path / FILENAME
    footer = (f"the whole report: {file_link(page)}"
              if page.is_file() else f"no {FILENAME} yet: <code>deepworks report {html.escape(str(ctx.path))}</code>")
    return card(name, "".join(bodies), kind="Report", meta=meta, footer=footer)
