"""The report's sections, by name in a registry, in page order.

A section is a function of the :class:`~deepworks.reporting.context.RunContext` that returns the
section's body as HTML, a :func:`note` when its inputs are missing, or None when it does not
apply to this run (wrong-image grids for a table). Sections registered with ``tasks=`` appear
only for runs of those tasks: classification brings the confusion matrix, the per-class table,
calibration and the most confidently wrong images; regression the predicted-vs-actual scatter
and the residuals; forecasting the forecasts and the error per step ahead; the supervised tasks
(:data:`SUPERVISED`) the learning curves, final metrics, diagnosis, gradients and layer table;
a generative run (``generation``) its losses, sample grids and quality measures. A new task
registers its own sections the same way::

    @section("ranked", title="Ranked examples", order=60, tasks=("ranking",))
    def _ranked(ctx: RunContext) -> str | None:
        ...

Every text that comes from the run is escaped with :func:`html.escape`.
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from deepworks.registry import Registry
from deepworks.reporting import plots
from deepworks.reporting.context import RunContext

__all__ = ["Section", "SECTIONS", "KEY_ORDER", "section", "sections_for", "key_sections", "note", "table", "figure", "number", "SUPERVISED"]

# the tasks that learn targets (curves of train/val loss and metrics, a diagnosis, a layer
# table); a generative run (task "generation") has sections of its own
SUPERVISED = ("classification", "regression", "forecasting")


@dataclass(frozen=True)
class Section:
    name: str
    title: str
    order: float  # place on the page, smallest first
    render: Callable[[RunContext], str | None]
    tasks: tuple[str, ...] | None  # the tasks it is for; None: every run


SECTIONS: Registry = Registry("report section")

# The page reads top down as a user looks: the diagnosis, the learning curves and the final metrics
# (orders below KEY_ORDER), then the config (folded), the data, and the task's own figures.
KEY_ORDER = 20


def section(name: str, *, title: str, order: float, tasks: Iterable[str] | None = None):
    """Decorator: register ``render(ctx) -> html | None`` as the section ``name``."""

    def deco(render: Callable[[RunContext], str | None]):
        entry = Section(name, title, order, render, tuple(tasks) if tasks is not None else None)
        SECTIONS.register(name, description=title)(entry)
        return render

    return deco


def sections_for(task: str) -> list[Section]:
    """The sections of a run of ``task``, in page order."""
    entries = [SECTIONS.get(name) for name in SECTIONS]
    return sorted((s for s in entries if s.tasks is None or task in s.tasks), key=lambda s: (s.order, s.name))


def key_sections(task: str) -> list[Section]:
    """The sections a user reads first, above the config: the diagnosis, the learning curves and
    the final metrics (a GAN's losses, samples and quality). A run's report shown inline in
    Jupyter shows these."""
    return [s for s in sections_for(task) if s.order < KEY_ORDER]


# ----------------------------------------------------------------------------- HTML helpers

esc = html.escape


def note(text: str, kind: str = "note") -> str:
    """A short paragraph saying what is missing (``kind="warn"`` for something wrong)."""
    return f'<p class="{kind}">{esc(text)}</p>'


def number(value: Any, digits: int = 4) -> str:
    """A table cell's text: thousands separators for counts, ``digits`` decimals for figures."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if value != 0 and abs(value) < 10 ** -digits:
            return f"{value:.3g}"
        return f"{value:,.{digits}f}"
    return str(value)


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], cls: str = "") -> str:
    """An HTML table; cells that are numbers are right-aligned and formatted with :func:`number`."""
    head = "".join(f"<th>{esc(str(h))}</th>" for h in headers)
    body = []
    for row in rows:
        cells = []
        for cell in row:
            numeric = isinstance(cell, (int, float)) and not isinstance(cell, bool)
            cells.append(f'<td class="num">{esc(number(cell))}</td>' if numeric else f"<td>{esc(number(cell))}</td>")
        body.append(f"<tr>{''.join(cells)}</tr>")
    attr = f' class="{esc(cls)}"' if cls else ""
    return f"<table{attr}><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def figure(png: bytes, ident: str, alt: str, caption: str = "") -> str:
    """An inlined PNG (a data URI) with a stable id for tests and links."""
    cap = f"<figcaption>{esc(caption)}</figcaption>" if caption else ""
    return (f'<figure><img id="{esc(ident)}" class="figure" src="{plots.data_uri(png)}" alt="{esc(alt)}">'
            f"{cap}</figure>")


def facts(pairs: Iterable[tuple[str, Any]]) -> str:
    """A definition list of (label, value), leaving out values that are None."""
    items = "".join(f"<dt>{esc(k)}</dt><dd>{esc(number(v))}</dd>" for k, v in pairs if v is not None)
    return f"<dl>{items}</dl>" if items else ""


def _text(value: Any) -> str:
    """Evidence of a diagnosis as one line of text, whatever its shape."""
    if isinstance(value, dict):
        return "; ".join(f"{k}: {number(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return "; ".join(_text(v) for v in value)
    return number(value)


# ----------------------------------------------------------------------------- sections for every run


@section("diagnosis", title="Diagnosis", order=10, tasks=SUPERVISED)
def _diagnosis(ctx: RunContext) -> str | None:
    if ctx.summary is None:
        return note(f"No diagnosis: {ctx.missing('summary.json')}")
    findings = ctx.summary.get("diagnosis")
    if findings is None:
        return note("No diagnosis in summary.json (the run predates it, or training did not finish).")
    if not findings:
        return note("The diagnosis found nothing to report.")
    items = []
    for f in findings:
        f = f if isinstance(f, dict) else {"kind": "finding", "evidence": f}
        kind = str(f.get("kind", "finding"))
        cls = "finding healthy" if kind == "healthy" else "finding warn"
        parts = [f'<span class="kind">{esc(kind.replace("_", " "))}</span>']
        if f.get("evidence") is not None:
            parts.append(f'<span class="evidence">{esc(_text(f["evidence"]))}</span>')
        if f.get("advice"):
            parts.append(f'<span class="advice">{esc(_text(f["advice"]))}</span>')
        items.append(f'<li class="{cls}">{" ".join(parts)}</li>')
    return f'<ul class="findings">{"".join(items)}</ul>'


@section("config", title="Config", order=KEY_ORDER)
def _config(ctx: RunContext) -> str | None:
    head = note(f"Shown as written; {ctx.missing('config.yaml')}", "warn") if "config.yaml" in ctx.problems else ""
    lines = ctx.config_text.count("\n")
    # folded: a hundred lines of settings would push the data and the results below the fold
    return (f"{head}<details><summary>The resolved config (<code>config.yaml</code>, every default filled in, "
            f"{lines} lines)</summary><pre>{esc(ctx.config_text)}</pre></details>")


@section("data", title="Data", order=30)
def _data(ctx: RunContext) -> str | None:
    d = ctx.data
    if d is None:
        return note(f"No data record: {ctx.missing('data.json')}")
    shape = d.get("input_shape") or []
    loading = d.get("loading") or {}
    parts = [facts([
        ("dataset", d.get("dataset")),
        ("source", d.get("source")),
        ("task", ctx.task),
        ("target", d.get("target")),
        ("input shape", " x ".join(str(s) for s in shape) if shape else None),
        ("input columns", len(d["features"]) if isinstance(d.get("features"), list) else None),
        ("encoded features", len(d["feature_names"]) if d.get("feature_names") else None),
        ("classes", len(d["classes"]) if d.get("classes") else None),
        ("loaded", loading.get("path")),
        ("test split", "the dataset's official test set" if d.get("official_test") else "carved from the data"),
    ])]
    sizes = d.get("sizes") or {}
    if sizes:
        parts.append("<h3>Split sizes</h3>" + table(["split", "samples"], [(s, sizes.get(s)) for s in ("train", "val", "test")]))
    parts.append(_text_facts(d))
    parts.append(_class_counts(ctx))
    dup = d.get("duplicates")
    if isinstance(dup, dict):
        parts.append(_duplicates(dup))
    skipped = ((ctx.summary or {}).get("data") or {}).get("skipped_files")
    if isinstance(skipped, dict) and skipped.get("count"):
        rows = [(f.get("file"), f.get("reason")) for f in skipped.get("files", [])[:20]]
        parts.append(f"<h3>Skipped files ({skipped['count']})</h3>" + table(["file", "reason"], rows))
    parts.append(_baselines(ctx))
    return "".join(parts)


def _text_facts(d: dict[str, Any]) -> str:
    """A text run: the tokenizer and vocabulary, and per split the token lengths, cut and empty texts."""
    text, tokens = d.get("text"), d.get("tokens")
    encoder = (d.get("input") or {}).get("encoder")
    if d.get("kind") == "subwords" and isinstance(encoder, dict) and isinstance(tokens, dict):
        return _transformer_facts(d, encoder, tokens)
    if isinstance(encoder, dict) and isinstance(tokens, dict):
        return _encoder_facts(d, encoder, tokens)
    if not isinstance(text, dict) or not isinstance(tokens, dict):
        return ""
    head = facts([
        ("text column", d.get("text_column")),
        ("tokenizer", f"{text.get('tokenizer')}{', lower-cased' if text.get('lowercase') else ''}"),
        ("vocabulary", f"{text.get('vocab_size')} ids (<pad> 0, <unk> 1; tokens seen at least {text.get('min_freq')} "
                       f"times in training, at most {text.get('max_vocab')})"),
        ("max length", f"{text.get('max_length')} tokens"),
    ])
    rows = []
    for split in ("train", "val", "test"):
        t = tokens.get(split) or {}
        length = t.get("length") or {}
        rows.append((split, t.get("texts"), length.get("median"), length.get("p95"), length.get("max"),
                     t.get("truncated"), t.get("empty"), t.get("unknown_rate")))
    return "<h3>Texts</h3>" + head + table(
        ["split", "texts", "median tokens", "95th percentile", "longest", "cut to max length", "empty", "<unk> share"],
        rows,
    )


def _transformer_facts(d: dict[str, Any], encoder: dict[str, Any], tokens: dict[str, Any]) -> str:
    """A run fine-tuning a pretrained text encoder: its origin, the tokenizer saved in the run, and per
    split the subword tokens per text and how many were cut."""
    settings = d.get("tokenizer") or {}
    head = facts([
        ("text column", d.get("text_column")),
        ("pretrained encoder", f"{encoder.get('name')} (fine-tuned; {encoder.get('source')})"),
        ("weights sha256", str(encoder.get("sha256") or "") or None),
        ("tokenizer", f"{settings.get('class')}, saved in the run ({settings.get('folder')}/); "
                      f"{(d.get('input') or {}).get('vocab_size')} ids; texts cut at {settings.get('max_length')} "
                      "tokens, batches padded to their longest text"),
    ])
    rows = _token_rows(tokens)
    return "<h3>Texts</h3>" + head + table(
        ["split", "texts", "median tokens", "95th percentile", "longest", "cut to max length", "empty"], rows)


def _token_rows(tokens: dict[str, Any]) -> list[tuple[Any, ...]]:
    """Per split: texts, median / 95th percentile / longest length, how many were cut, how many empty."""
    rows = []
    for split in ("train", "val", "test"):
        t = tokens.get(split) or {}
        length = t.get("length") or {}
        rows.append((split, t.get("texts"), length.get("median"), length.get("p95"), length.get("max"),
                     t.get("truncated"), t.get("empty")))
    return rows


def _encoder_facts(d: dict[str, Any], encoder: dict[str, Any], tokens: dict[str, Any]) -> str:
    """A text run read through a frozen sentence encoder: its origin, and per split the word pieces per text."""
    sha = str(encoder.get("sha256") or "")
    head = facts([
        ("text column", d.get("text_column")),
        ("sentence encoder", f"{encoder.get('name')} (frozen; {encoder.get('source')})"),
        ("weights sha256", sha or None),
        ("embedding", f"{encoder.get('features', 'sentence')} features, {encoder.get('dim')} values per text; "
                      f"texts cut at {encoder.get('max_seq_length')} word pieces"),
    ])
    rows = _token_rows(tokens)
    return "<h3>Texts</h3>" + head + table(
        ["split", "texts", "median word pieces", "95th percentile", "longest", "cut by the encoder", "empty"], rows,
    )


def _class_counts(ctx: RunContext) -> str:
    classes = ctx.classes
    if ctx.task != "classification" or not classes:
        return ""
    recorded = (ctx.data or {}).get("class_counts")
    counts: dict[str, list[int]] = {}
    source = ""
    if isinstance(recorded, dict):
        counts = {s: list(v) for s, v in recorded.items() if isinstance(v, list)}
    elif ctx.predictions:  # older runs: val and test from the kept targets
        for split in ("val", "test"):
            targets = ctx.predictions.get(split, {}).get("targets")
            if targets is not None:
                counts[split] = torch.bincount(targets.long(), minlength=len(classes)).tolist()
        source = " (validation and test from predictions.safetensors; the training split's are not recorded)"
    if not counts:
        return note("Class counts per split are not recorded for this run.")
    splits = [s for s in ("train", "val", "test") if s in counts]
    if len(classes) > 50:  # a long table says less than its extremes
        rows = []
        for s in splits:
            c = np.asarray(counts[s])
            rows.append((s, int(c.sum()), int(c.min()), classes[int(c.argmin())], int(c.max()), classes[int(c.argmax())]))
        return (f"<h3>Class counts{esc(source)}</h3>"
                + table(["split", "samples", "smallest class", "", "largest class", ""], rows))
    rows = [(name, *(counts[s][i] if i < len(counts[s]) else None for s in splits)) for i, name in enumerate(classes)]
    return f"<h3>Class counts{esc(source)}</h3>" + table(["class", *splits], rows, cls="compact")


def _duplicates(dup: dict[str, Any]) -> str:
    within, across = dup.get("within") or {}, dup.get("across") or {}
    leaked, dropped = dup.get("leaked") or {}, dup.get("dropped") or {}
    rows = [(f"within {k}", v) for k, v in within.items()] + [(f"across {k}", v) for k, v in across.items()]
    rows += [(f"{k} samples also in training", v) for k, v in leaked.items()]
    rows += [(f"dropped from {k}", v) for k, v in dropped.items()]
    policy = dup.get("policy")
    head = f"<h3>Exact duplicates (data.on_duplicates: {esc(str(policy))})</h3>" if policy else "<h3>Exact duplicates</h3>"
    found = [(where, count) for where, count in rows if count]
    if not found:
        return head + "<p>No sample occurs twice, within a split or across splits.</p>"
    return head + table(["where", "count"], found)


def _baselines(ctx: RunContext) -> str:
    baselines = (ctx.summary or {}).get("baselines")
    if not isinstance(baselines, dict) or not baselines:
        return ""
    metrics: list[str] = []
    for scores in baselines.values():
        for split in ("val", "test"):
            metrics += [m for m in (scores.get(split) or {}) if m not in metrics]
    headers = ["model"] + [f"{split} {m}" for split in ("val", "test") for m in metrics]
    rows = [(name, *((scores.get(split) or {}).get(m) for split in ("val", "test") for m in metrics))
            for name, scores in baselines.items()]
    s = ctx.summary or {}
    rows.append(("the network", *((s.get(split) or {}).get(m) for split in ("val", "test") for m in metrics)))
    return ("<h3>Baselines</h3><p>Simple models on the same split and features, beside the network:</p>"
            + table(headers, rows))


def _best_epoch(ctx: RunContext) -> int | None:
    best = (ctx.summary or {}).get("best_epoch")
    if isinstance(best, int):
        return best
    flagged = [r.get("epoch") for r in ctx.metrics if r.get("best")]
    return flagged[-1] if flagged else None


def _monitor(ctx: RunContext) -> str | None:
    monitor = (ctx.summary or {}).get("monitor")
    if not monitor and ctx.config is not None:
        monitor = ctx.config.train.monitor
    return monitor if monitor and monitor != "auto" else None


@section("curves", title="Learning curves", order=12, tasks=SUPERVISED)
def _curves(ctx: RunContext) -> str | None:
    problem = ctx.missing("metrics.jsonl")
    if not ctx.metrics:
        return note(f"No learning curves: {problem or 'metrics.jsonl holds no epoch yet.'}")
    head = note(problem, "warn") if problem else ""
    monitor = _monitor(ctx)
    metric = plots.curves_metric(ctx.metrics, monitor, ctx.task)
    best = _best_epoch(ctx)
    s = ctx.summary or {}
    stopped = s.get("epochs_run") if s.get("stopped_early") else None
    png = plots.learning_curves(ctx.metrics, metric, best_epoch=best, stopped_epoch=stopped, monitor=monitor)
    epochs = len(ctx.metrics)
    caption = [f"{epochs} epoch{'s' if epochs != 1 else ''} logged"]
    if best is not None:
        value = next((r.get(monitor) for r in ctx.metrics if r.get("epoch") == best), None) if monitor else None
        caption.append(f"best epoch {best}" + (f" ({monitor} {number(value)})" if value is not None else ""))
    if stopped is not None:
        caption.append(f"early stopping ended the run after epoch {stopped}")
    elif s.get("stopped_early") is False:
        caption.append("ran every planned epoch")
    return head + figure(png, "fig-learning-curves", "learning curves", "; ".join(caption) + ".")


@section("metrics", title="Final metrics", order=14, tasks=SUPERVISED)
def _metrics(ctx: RunContext) -> str | None:
    s = ctx.summary
    if s is None:
        return note(f"No final metrics: {ctx.missing('summary.json')}")
    splits = [sp for sp in ("train", "val", "test") if isinstance(s.get(sp), dict)]
    if not splits:
        return note("summary.json holds no metrics yet.")
    keys: list[str] = []
    for sp in splits:
        keys += [k for k in s[sp] if k not in keys and k != "support"]
    rows = [(sp, *(s[sp].get(k) for k in keys), s[sp].get("support")) for sp in splits]
    out = table(["split", *keys, "samples"], rows)
    if "test" not in splits:
        out += note("No test figures: the run has not been evaluated on the test split.")
    out += facts([
        ("epochs run", s.get("epochs_run")),
        ("best epoch", s.get("best_epoch")),
        ("monitor", s.get("monitor")),
        ("stopped early", s.get("stopped_early")),
        ("training time", f"{s['wall_seconds']:.1f} s" if isinstance(s.get("wall_seconds"), (int, float)) else None),
        ("device", s.get("device")),
        ("processes", s.get("processes")),
        ("precision", s.get("precision")),
        ("channels_last", s.get("channels_last")),
    ])
    return out


@section("gradients", title="Gradient flow", order=90, tasks=SUPERVISED)
def _gradients(ctx: RunContext) -> str | None:
    problem = ctx.missing("gradients.jsonl")
    if not ctx.gradients:
        every = ctx.config.train.log_gradients if ctx.config is not None else None
        if problem or every:
            return note(f"No gradient records: {problem or 'gradients.jsonl is missing or empty.'}")
        return note("Gradient norms were not recorded for this run; set train.log_gradients: N to record each "
                    "layer's gradient norm every N steps.")
    info = (ctx.summary or {}).get("gradients") or {}
    flagged = {layer: "vanishing" for layer in info.get("vanishing") or {}}
    flagged.update({layer: "exploding" for layer in info.get("exploding") or {}})
    out = note(problem, "warn") if problem else ""
    out += figure(plots.gradient_flow(ctx.gradients, flagged), "fig-gradients", "gradient flow",
                  f"{len(ctx.gradients)} records, steps {ctx.gradients[0].get('step')} to {ctx.gradients[-1].get('step')}.")
    rows = [(layer, kind, (info.get(kind) or {}).get(layer)) for layer, kind in flagged.items()]
    if rows:
        out += table(["layer", "flag", "first step"], rows)
    if any(isinstance(r.get("time_steps"), list) and r["time_steps"] for r in ctx.gradients):  # sequence models
        reach = (ctx.summary or {}).get("gradient_reach") or {}
        caption = "How far back in each sequence the loss's gradient reaches."
        if reach.get("steps") is not None:
            caption = (f"Gradient reach: {reach['steps']} of {reach.get('length')} steps back from the last step stay "
                       f"above {reach.get('threshold', 1e-3):g} of the peak norm (last recorded step).")
        out += figure(plots.gradient_through_time(ctx.gradients), "fig-gradient-time", "gradient through time", caption)
    return out


@section("model", title="Model", order=100, tasks=SUPERVISED)
def _model(ctx: RunContext) -> str | None:
    if ctx.config is None or ctx.data is None or not ctx.data.get("input_shape"):
        return note(f"No model summary: {ctx.missing('config.yaml', 'data.json') or 'the input shape is not recorded.'}")
    from deepworks.models.registry import model_from_config
    from deepworks.models.summary import summarize
    from deepworks.training.tasks import task_from_record

    shape = tuple(int(s) for s in ctx.data["input_shape"])
    task = task_from_record(ctx.data.get("task"), ctx.classes)
    with torch.random.fork_rng(devices=[]):  # building draws initial weights: leave the caller's RNG alone
        vocab_size = (ctx.data.get("input") or {}).get("vocab_size")  # text: token ids
        model = model_from_config(ctx.config.model, shape, task.output_size(), vocab_size=vocab_size)
        if ctx.config.transfer is not None:  # which blocks learned (the structure alone: no weights loaded)
            from deepworks.transfer import build

            model = build(model, ctx.config, ctx.data, load=False)
        summary = summarize(model, shape, vocab_size=vocab_size)
    rows = []
    for row in summary["layers"]:
        layer = row["type"] + (f" {row['detail']}" if row.get("detail") else "")
        params = "(shared)" if row.get("shared") else (row["params"] or None)
        trainable = "-" if not row["params"] or row.get("shared") else (
            "yes" if row["trainable"] == row["params"] else "no" if not row["trainable"] else "partial")
        rf = row.get("receptive_field")
        rf_text = None if rf is None else (str(rf) if row.get("jump") in (None, 1) else f"{rf} (jump {row['jump']})")
        out_shape = "x".join(str(s) for s in row["output_shape"]) if row.get("output_shape") is not None else None
        rows.append((row["index"], row["name"], layer, out_shape, params, trainable, rf_text))
    head = facts([
        ("model", ctx.config.model.name),
        ("input", " x ".join(str(s) for s in shape)),
        ("output", "x".join(str(s) for s in summary["output_shape"]) if summary.get("output_shape") else None),
        ("parameters", summary["total_params"]),
        ("trainable", summary["trainable_params"]),
        ("frozen", summary["frozen_params"]),
    ])
    return head + _transfer_facts(ctx) + table(
        ["#", "name", "layer", "output shape", "params", "trainable", "receptive field"], rows, cls="compact model")


def _transfer_facts(ctx: RunContext) -> str:
    """Where the starting weights came from and what learned (summary.json ``transfer``)."""
    t = (ctx.summary or {}).get("transfer")
    if not t:
        return ""
    w = t.get("weights") or {}
    cache = t.get("feature_cache") or {}
    tuned = t.get("tuned_blocks")
    learning = None if tuned is None else (
        f"{len(tuned)} of {t.get('blocks')} body blocks at lr x {t.get('backbone_lr_scale'):g}"
        + (f" after {t['warmup_epochs']} frozen epochs" if t.get("warmup_epochs") else "") if tuned else "the head only")
    source = w.get("run") or w.get("source")
    return facts([
        ("transfer", t.get("mode")),
        ("weights", source),
        ("file", w.get("file")),
        ("SHA-256", w.get("sha256")),
        ("keys matched", w.get("matched")),
        ("head", w.get("head")),
        ("learning", learning),
        ("input", (lambda i: f"{i.get('channels')} channels, {i.get('resolution') or 'data'} px, mean "
                   f"{i.get('mean')}, std {i.get('std')}")(w["input"]) if w.get("input") else None),
        ("feature cache", f"{cache['images']} images x {cache['features']} features in {cache['seconds']} s "
                          f"({cache['precision']}), once" if cache else None),
    ])


# ----------------------------------------------------------------------------- classification


@section("confusion", title="Confusion matrix", order=60, tasks=("classification",))
def _confusion(ctx: RunContext) -> str | None:
    r = ctx.test_report
    if r is None or not r.get("confusion_matrix"):
        return note(f"No confusion matrix: {ctx.missing('test_report.json') or 'test_report.json does not hold one.'}")
    classes = [str(c) for c in r.get("classes") or ctx.classes]
    png = plots.confusion_matrix(r["confusion_matrix"], classes)
    return figure(png, "fig-confusion", "confusion matrix",
                  "Rows: the true class; columns: the predicted class; colour: the share of the true class's samples.")


@section("per_class", title="Per-class precision, recall and F1", order=62, tasks=("classification",))
def _per_class(ctx: RunContext) -> str | None:
    r = ctx.test_report
    if r is None or not r.get("per_class"):
        return note(f"No per-class figures: {ctx.missing('test_report.json') or 'test_report.json does not hold them.'}")
    rows = [(c.get("class"), c.get("precision"), c.get("recall"), c.get("f1"), c.get("support")) for c in r["per_class"]]
    rows.append(("macro average", r.get("macro_precision"), r.get("macro_recall"), r.get("macro_f1"), r.get("support")))
    return "<p>On the test split:</p>" + table(["class", "precision", "recall", "F1", "support"], rows, cls="compact")


def _probabilities(ctx: RunContext, split: str) -> tuple[torch.Tensor, torch.Tensor] | None:
    part = (ctx.predictions or {}).get(split) or {}
    outputs, targets = part.get("outputs"), part.get("targets")
    if outputs is None or targets is None or outputs.ndim != 2 or len(outputs) == 0:
        return None
    return torch.softmax(outputs.float(), dim=1), targets.long()


@section("calibration", title="Calibration", order=70, tasks=("classification",))
def _calibration(ctx: RunContext) -> str | None:
    if ctx.predictions is None:
        return note(f"No calibration: {ctx.missing('predictions.safetensors')}")
    from deepworks.evaluation.calibration import calibration

    results = {}
    for split in ("val", "test"):
        pt = _probabilities(ctx, split)
        if pt is not None:
            results[split] = calibration(*pt)
    if not results:
        return note("No calibration: predictions.safetensors holds no validation or test outputs.")
    rows = []
    for split, res in results.items():
        n = max(1, res["count"])
        confidence = sum(b["confidence"] * b["count"] for b in res["bins"]) / n
        accuracy = sum(b["accuracy"] * b["count"] for b in res["bins"]) / n
        rows.append((split, res["count"], res["ece"], res["mce"], confidence, accuracy))
    return (
        "<p>Do the predicted probabilities mean what they say? Samples are binned by their top-class "
        "probability; in a calibrated model each bin's accuracy equals its mean confidence. ECE is the "
        "samples-weighted mean gap, MCE the largest gap of a bin.</p>"
        + figure(plots.reliability(results), "fig-calibration", "reliability diagrams")
        + table(["split", "samples", "ECE", "MCE", "mean confidence", "accuracy"], rows)
    )


@section("wrong", title="Most confidently wrong validation images", order=80, tasks=("classification",))
def _wrong(ctx: RunContext) -> str | None:
    if ctx.data is not None and not ctx.is_image:
        return None  # tables have no images to show
    if ctx.predictions is None:
        return note(f"No images: {ctx.missing('predictions.safetensors')}")
    val = ctx.predictions.get("val") or {}
    index, images = val.get("wrong_index"), val.get("wrong_images")
    if index is None or images is None:
        if val.get("outputs") is not None:
            return note("The model got every validation image right: there is no wrong one to show.")
        return note("predictions.safetensors holds no validation images.")
    probs, targets = _probabilities(ctx, "val") or (None, None)
    classes = ctx.classes
    name = (lambda k: classes[k] if k < len(classes) else str(k))
    cells = []
    for i, image in zip(index.tolist(), images.numpy()):
        if probs is not None and i < len(probs):
            k = int(probs[i].argmax())
            caption = (f"true <b>{esc(name(int(targets[i])))}</b><br>predicted <b>{esc(name(k))}</b> "
                       f"({float(probs[i][k]):.2f})")
        else:
            caption = f"validation sample {i}"
        cells.append(f'<figure><img class="wrong-image" src="{plots.data_uri(plots.image_png(image))}" '
                     f'alt="validation sample {i}"><figcaption>{caption}</figcaption></figure>')
    return (f'<div id="fig-wrong" class="image-grid">{"".join(cells)}</div>'
            f"<p class=\"caption\">The {len(cells)} validation images the model got wrong with the highest confidence, "
            "most confident first: the true class, the predicted class and its probability.</p>")


# ----------------------------------------------------------------------------- regression


def _unscaled(ctx: RunContext) -> dict[str, tuple[np.ndarray, np.ndarray]] | None:
    """split -> (predicted, actual), (N, T) in the target's units."""
    record = ctx.task_record
    splits = {}
    for split in ("val", "test"):
        part = (ctx.predictions or {}).get(split) or {}
        outputs, targets = part.get("outputs"), part.get("targets")
        if outputs is None or targets is None or len(outputs) == 0:
            continue
        out = outputs.double().reshape(len(outputs), -1).numpy()
        tgt = targets.double().reshape(len(targets), -1).numpy()
        t = out.shape[1]
        mean = np.asarray(record.get("mean") or [0.0] * t, dtype=np.float64)
        std = np.asarray(record.get("std") or [1.0] * t, dtype=np.float64)
        splits[split] = (out * std + mean, tgt * std + mean)  # the model learns (y - mean) / std
    return splits or None


def _targets(ctx: RunContext, count: int) -> list[str]:
    names = ctx.task_record.get("targets") or ([ctx.data.get("target")] if ctx.data and ctx.data.get("target") else [])
    return [str(n) for n in names][:count] + [f"target {i}" for i in range(len(names), count)]


def _regression_figures(ctx: RunContext, plot, ident: str, alt: str) -> str:
    if ctx.predictions is None:
        return note(f"No figure: {ctx.missing('predictions.safetensors')}")
    splits = _unscaled(ctx)
    if splits is None:
        return note("predictions.safetensors holds no validation or test outputs.")
    count = next(iter(splits.values()))[0].shape[1]
    out = []
    for t, target in enumerate(_targets(ctx, count)[:8]):
        per = {s: (pred[:, t], actual[:, t]) for s, (pred, actual) in splits.items()}
        out.append(figure(plot(per, target), ident if t == 0 else f"{ident}-{t}", f"{alt}: {target}"))
    if count > 8:
        out.append(note(f"The first 8 of {count} targets are shown."))
    return "".join(out)


@section("predicted_actual", title="Predicted vs actual", order=60, tasks=("regression",))
def _predicted_actual(ctx: RunContext) -> str | None:
    return _regression_figures(ctx, plots.predicted_vs_actual, "fig-predicted-actual", "predicted vs actual")


@section("residuals", title="Residuals", order=62, tasks=("regression",))
def _residuals(ctx: RunContext) -> str | None:
    return _regression_figures(ctx, plots.residuals, "fig-residuals", "residuals")


# ----------------------------------------------------------------------------- forecasting


def _forecasts(ctx: RunContext) -> tuple[dict[str, np.ndarray], dict[str, Any]] | str:
    """The test windows' forecasts in the targets' units, (W, horizon, targets) each: the network's,
    the actual values and the baselines'; or a note saying what is missing."""
    if ctx.predictions is None:
        return note(f"No figure: {ctx.missing('predictions.safetensors')}")
    part = ctx.predictions.get("test") or {}
    source = (ctx.data or {}).get("input") or {}
    if part.get("outputs") is None or part.get("origin") is None or not source.get("time_step"):
        return note("predictions.safetensors or data.json lacks the test windows' forecasts.")
    record = ctx.task_record
    targets = [str(t) for t in record.get("targets") or source.get("targets") or []]
    horizon, t = int(record.get("horizon", 1)), len(targets)
    mean = np.tile(np.asarray(record.get("mean"), dtype=np.float64), horizon)
    std = np.tile(np.asarray(record.get("std"), dtype=np.float64), horizon)
    shaped = lambda v: np.asarray(v, dtype=np.float64).reshape(len(v), horizon, t)  # noqa: E731
    out = {"network": shaped(part["outputs"].double().numpy() * std + mean)}
    for name in ("actual", "last_value", "seasonal_naive"):
        if part.get(name) is not None:
            out[name] = shaped(part[name].double().numpy())
    from deepworks.data.series import TimeStep

    step = TimeStep.from_dict(source["time_step"])
    origin = np.datetime64(source["origin"], "ns") if step.is_datetime else float(source["origin"])
    times = step.at(origin, part["origin"].long().numpy())
    if "actual" not in out:
        return note("predictions.safetensors lacks the test period's actual values.")
    return out, {"targets": targets, "horizon": horizon, "times": times, "source": source}


@section("forecast", title="Forecasts over the test period", order=60, tasks=("forecasting",))
def _forecast(ctx: RunContext) -> str | None:
    got = _forecasts(ctx)
    if isinstance(got, str):
        return got
    fc, meta = got
    one = {name: (meta["times"], values[:, 0, :]) for name, values in fc.items() if name != "actual"}
    png = plots.forecast(meta["times"], fc["actual"][:, 0, :], one, meta["targets"],
                         title="test period: the forecast one step ahead of each window")
    src = meta["source"]
    return figure(png, "fig-forecast", "forecasts over the test period",
                  f"{len(meta['times'])} test windows of {src.get('lookback')} steps ({src.get('time_step_text')}); "
                  "each point is a forecast made one step before it, by the network and the baselines.")


@section("per_step", title="Error per step ahead", order=62, tasks=("forecasting",))
def _per_step(ctx: RunContext) -> str | None:
    got = _forecasts(ctx)
    if isinstance(got, str):
        return got
    fc, meta = got
    errors = {name: np.abs(values - fc["actual"]).mean(axis=(0, 2)).tolist()
              for name, values in fc.items() if name != "actual"}
    names = list(errors)
    rows = [(h + 1, *(errors[n][h] for n in names)) for h in range(meta["horizon"])]
    note_text = (meta["source"].get("baselines_note") or "")
    out = figure(plots.error_per_step(errors), "fig-error-per-step", "error per step ahead",
                 "Test MAE at each step ahead, in the targets' units (averaged over targets).")
    out += table(["step ahead", *(f"{n} MAE" for n in names)], rows)
    return out + (note(note_text) if note_text else "")


# ----------------------------------------------------------------------------- generative runs


@section("gan_losses", title="Adversarial losses", order=12, tasks=("generation",))
def _gan_losses(ctx: RunContext) -> str | None:
    if not ctx.metrics:
        return note(f"No curves: {ctx.missing('metrics.jsonl') or 'no epoch was recorded.'}")
    return figure(plots.adversarial_curves(ctx.metrics), "fig-gan-losses", "generator and discriminator losses",
                  "Per epoch: the generator's and the discriminator's losses, and the discriminator's mean output on "
                  "real and generated images. A discriminator that wins outright (D(fake) near 0, the generator's "
                  "loss climbing) leaves the generator no signal.")


@section("samples", title="Generated samples", order=14, tasks=("generation",))
def _samples(ctx: RunContext) -> str | None:
    grids = sorted((ctx.path / "samples").glob("epoch-*.png"))
    if not grids:
        return note("No sample grids: the run has no samples/epoch-NNN.png yet.")
    shown = [grids[-1]] if len(grids) == 1 else [grids[0], grids[-1]]
    parts = []
    for path in shown:
        try:
            png = path.read_bytes()
        except OSError as exc:
            parts.append(note(f"{path.name}: cannot be read ({exc.strerror or exc}).", "warn"))
            continue
        epoch = path.stem.removeprefix("epoch-").lstrip("0") or "0"
        parts.append(figure(png, f"fig-samples-{path.stem}", f"samples after epoch {epoch}",
                            f"After epoch {epoch}: the same fixed noise (and, for a conditional model, one class per "
                            "row) in every epoch's grid, so the grids compare."))
    return "".join(parts)


@section("quality", title="Quality and variety of the samples", order=16, tasks=("generation",))
def _quality(ctx: RunContext) -> str | None:
    quality = (ctx.summary or {}).get("quality")
    if not isinstance(quality, dict):
        return note("No quality measures: the run was trained with gan.quality: false, or has not finished.")
    head = facts([
        ("samples judged", quality.get("samples")),
        ("Fréchet distance on the judge's features (not FID)", quality.get("frechet_distance")),
        ("the same between two halves of the real images", quality.get("frechet_real_halves")),
        ("classes covered", f"{quality.get('classes_covered')} of {len(quality.get('class_counts') or []) or '?'}"
         if quality.get("classes_covered") is not None else None),
        ("entropy of the predicted classes (of the maximum)", quality.get("entropy_normalized")),
        ("largest class", f"{quality.get('largest_class')} ({number(quality.get('largest_share'), 3)})"
         if quality.get("largest_class") is not None else None),
    ])
    body = [head]
    collapse = quality.get("collapse") or {}
    if collapse.get("collapsed"):
        reasons = "; ".join(str(r) for r in collapse.get("reasons") or [])
        body.insert(0, note(f"Mode collapse: {reasons}. {collapse.get('advice') or ''}".strip(), "warn"))
    agreement = quality.get("label_agreement") or {}
    per_label = agreement.get("per_label") or {}
    if per_label:
        rows = [(label, share) for label, share in per_label.items()]
        body.append("<p>Label agreement: the share of the samples asked for each class that the judge assigns to it "
                    f"(mean {number(agreement.get('mean'), 3)}).</p>")
        body.append(table(["class asked for", "judged as that class"], rows))
    return "".join(body)
