"""Diagnosis in plain words: what went wrong in a run (or that nothing did), with the numbers.

:func:`diagnose` reads a run's per-epoch history (``metrics.jsonl``), its ``summary.json``
and, when there are, the kept model's validation outputs (``predictions.safetensors``), the
per-layer gradient norms (``gradients.jsonl``) and ``data.json``; it returns a list of
findings, each ``{"kind", "evidence", "advice"}``: the evidence is a sentence with the
figures that triggered it, the advice a next step naming the config keys to change (with
the run's values when the config is given). Kinds, most serious first:

    metrics_missing      the history is missing or cut short (the rest is judged on what is there)
    bad_data             the loss became NaN/inf on an input batch that holds NaN/inf values
    lr_too_high          divergence (NaN/inf loss), a loss above chance, a rising or oscillating loss
    collapse             (nearly) one class predicted for (nearly) every validation sample
    exploding_gradients  gradient norms above evaluation/gradient_flow.EXPLODING (or non-finite)
    vanishing_gradients  a layer's gradients far below the largest layer's in most records
    underfitting         training accuracy low and still rising, or validation no better than the
                         majority class (regression: R² no better than predicting the mean)
    lr_too_low           the training loss barely moved from chance level
    overfitting          validation loss rising after its minimum while the training loss falls
    poor_calibration     validation expected calibration error above ECE_THRESHOLD
    healthy              none of the above: one entry with the key figures

Each threshold is a named constant below with the reason for its value.

>>> history = [{"epoch": e, "train_loss": 2.30 - 0.001 * e, "val_loss": 2.31 - 0.001 * e,
...             "train_accuracy": 0.1, "val_accuracy": 0.1} for e in range(1, 11)]
>>> [f["kind"] for f in diagnose(history, {"task": "classification"}, data_info={"classes": list("0123456789")})]
['lr_too_low']
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from deepworks.evaluation.gradient_flow import EXPLODING, VANISHING, flag_norms

__all__ = ["diagnose", "diagnose_run", "render_diagnosis", "KINDS"]

KINDS = (
    "metrics_missing", "bad_data", "lr_too_high", "collapse", "exploding_gradients", "vanishing_gradients",
    "underfitting", "lr_too_low", "overfitting", "behind_baseline", "poor_calibration", "healthy",
)

# --- overfitting
# the validation loss must have stayed above its minimum for at least this many final epochs:
# one or two worse epochs after a minimum are the ordinary noise of a small validation split
OVERFIT_EPOCHS = 3
# ... and the mean of those epochs must be at least this fraction above the minimum (10%):
# smaller rises are within epoch-to-epoch noise, and cost little
OVERFIT_RISE = 0.10
# ... and by at least 1% of the chance-level loss (ln K; else the first epoch's validation loss):
# near zero, a 10% rise is a few samples' worth of confidence, not a trend
OVERFIT_MIN_RISE = 0.01

# --- underfitting
# a network should fit the data it trains on; under 90% training accuracy (of the kept model,
# in eval mode) it has not, on every built-in dataset a small model reaches more
UNDERFIT_ACCURACY = 0.90
# "still rising": training accuracy (or R²) up by at least a point over the last RISING_EPOCHS
# epochs, so more epochs would still help
STILL_RISING = 0.01
RISING_EPOCHS = 3
# validation accuracy within two points of always predicting the most common class has learned
# next to nothing (two points is about the sampling error of a few hundred samples)
BASELINE_MARGIN = 0.02
# regression: predicting the training mean scores R² = 0; at or under 0.05 the model adds nothing
R2_FLOOR = 0.05
# regression: training R² under 0.5 and still rising leaves half the variance unexplained
UNDERFIT_R2 = 0.5

# --- learning rate
# too low: the training loss fell by less than 5% from the first epoch to its lowest ...
LR_LOW_CHANGE = 0.05
LR_LOW_MIN_EPOCHS = 3  # ... over at least three epochs (fewer cannot show a trend)
# ... and the first epoch's loss was still at least 80% of chance level (ln K, or 1 for MSE on
# standardised targets): a model that learned in epoch 1 and then plateaued has another problem
LR_LOW_NEAR_CHANCE = 0.8
# too high: a training loss above 3x chance level (a uniform guess over the classes) means the
# updates throw the weights past any minimum; without a chance level, 3x the first epoch's loss
LOSS_BLOWUP = 3.0
# too high: the last epoch's training loss 1.5x its minimum (and more than RISE_ABS of the
# reference loss above it, so bumps on a near-zero loss do not count): the optimizer is climbing
RISE_FACTOR = 1.5
RISE_ABS = 0.10
# too high: oscillation, the epoch loss going up by more than 10% (and more than NOISE_FLOOR of
# the reference loss) in at least a quarter of the epoch-to-epoch steps (and at least twice):
# with a good learning rate the epoch-mean training loss falls nearly monotonically
OSC_JUMP = 0.10
OSC_FRACTION = 0.25
NOISE_FLOOR = 0.01

# --- predictions
# collapse: one class predicted for at least 90% of the validation samples although it is
# less than 90% of their labels
COLLAPSE_SHARE = 0.90
# calibration: an expected calibration error above 0.1 means confidence and accuracy differ by
# ten points on average, far more than the 0.01-0.05 of a well-calibrated classifier
ECE_THRESHOLD = 0.10
# ... judged on at least 100 validation samples: with 15 bins, fewer leave the estimate mostly noise
CALIBRATION_MIN_SAMPLES = 100

# --- baselines: the network's validation figure against the best simple model's on the same split
# (summary.json "baselines", other than always predicting one class, which underfitting judges):
# behind by more than a point of accuracy, or by more than 5% of the error (MAE), it did not pay off
BEHIND_ACCURACY = 0.01
BEHIND_ERROR = 0.05

# --- gradients (thresholds: deepworks.training.gradients, the same the training log warns with)
# a layer counts as vanishing when it is flagged in at least half of the records: a single
# small norm (a dead batch, a saturated step) is not a trend
GRAD_PERSIST = 0.5

_LABELS = {
    "metrics_missing": "metrics missing",
    "bad_data": "bad data",
    "lr_too_high": "learning rate too high",
    "collapse": "collapse",
    "exploding_gradients": "exploding gradients",
    "vanishing_gradients": "vanishing gradients",
    "underfitting": "underfitting",
    "lr_too_low": "learning rate too low",
    "overfitting": "overfitting",
    "behind_baseline": "behind a simple baseline",
    "poor_calibration": "poor calibration",
    "healthy": "healthy",
}


# findings that make a model's calibration beside the point
_BROKEN = ("bad_data", "lr_too_high", "collapse", "underfitting", "lr_too_low")


def _finding(kind: str, evidence: str, advice: str) -> dict[str, str]:
    return {"kind": kind, "evidence": evidence, "advice": advice}


def _num(value: Any) -> float | None:
    """A number from a JSON record (NaN and inf kept), or None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _g(x: float) -> str:
    return f"{x:.3g}" if math.isfinite(x) else str(x)


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _schema_field(config: Mapping[str, Any], path: str) -> Any:
    """The pydantic field of the key ``path`` (``train.label_smoothing``, ``model.dropout``) in the
    schema of a run whose config is ``config``: :class:`~deepworks.config.Config`'s sections and, in a
    component block (``model``, ``train.optimizer``, ...), the params registered under the block's
    name. None when the schema has no such key (e.g. ``model.batch_norm`` of an LSTM)."""
    # the model registry is bound to the `model` block on import; the optimizer and schedule
    # registries are bound by deepworks.training, which every caller of the diagnosis has imported
    import deepworks.models  # noqa: F401
    from pydantic import BaseModel

    from deepworks.config import Config, component_registry

    schema: Any = Config
    field = None
    node: Any = config
    parts = path.split(".")
    for i, part in enumerate(parts):
        if schema is None:
            return None
        field = schema.model_fields.get(part)
        registry = component_registry(tuple(parts[:i]))
        if field is None and registry is not None:
            name = node.get("name") if isinstance(node, Mapping) else None
            name = name if isinstance(name, str) else schema.model_fields["name"].default
            try:
                params = registry.entry(name).params
            except Exception:  # an unknown name: the config would not load, so no key is known
                return None
            field = params.model_fields.get(part) if params is not None else None
        if field is None:
            return None
        node = node.get(part) if isinstance(node, Mapping) else None
        schema = next((t for t in _types_in(field.annotation) if isinstance(t, type) and issubclass(t, BaseModel)), None)
    return field


def _types_in(annotation: Any):
    """The annotation and every type inside it (unions, Annotated, Optional)."""
    yield annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        yield from _types_in(arg)


def _limits(field: Any) -> tuple[float | None, float | None]:
    """(floor, ceiling) of a numeric field from its ge/gt/le/lt constraints (also those inside a union,
    as in ``LR = Annotated[float, Field(gt=0)] | Literal["auto"]``); None where there is none. A value at
    a ``ge`` floor cannot be lowered; a ``gt`` floor is never reached, so any valid value can be."""
    import annotated_types as at

    constraints = list(field.metadata)
    for t in _types_in(field.annotation):
        constraints += [m for m in getattr(t, "__metadata__", ()) for m in getattr(m, "metadata", [m])]
    floor = ceiling = None
    for c in constraints:
        if isinstance(c, at.Ge):
            floor = float(c.ge)
        elif isinstance(c, at.Le):
            ceiling = float(c.le)
    return floor, ceiling


def _config_dict(config: Any) -> dict[str, Any]:
    if config is None:
        return {}
    if hasattr(config, "model_dump"):
        return config.model_dump(mode="json")
    return dict(config) if isinstance(config, Mapping) else {}


class _Run:
    """What the rules read, gathered once."""

    def __init__(self, history, summary, predictions, gradients, data_info, config, error):
        self.history = [r for r in (history or []) if isinstance(r, Mapping) and _num(r.get("epoch")) is not None]
        self.summary = dict(summary or {})
        self.data_info = dict(data_info or {})
        self.config = _config_dict(config)
        self.error = error
        self.gradients = [r for r in (gradients or []) if isinstance(r, Mapping) and isinstance(r.get("norms"), Mapping)]
        task = self.summary.get("task") or (predictions or {}).get("task")
        record = self.data_info.get("task")
        if not task and isinstance(record, Mapping):
            task = record.get("name")
        if not task:
            keys = {k for r in self.history for k in r}
            task = "regression" if "train_r2" in keys else "classification"
        self.task = task
        self.classes = [str(c) for c in self.data_info.get("classes") or []]
        val = (predictions or {}).get("val") if isinstance(predictions, Mapping) else None
        self.val_outputs = self.val_targets = None
        if isinstance(val, Mapping) and isinstance(val.get("outputs"), torch.Tensor) and isinstance(val.get("targets"), torch.Tensor):
            if len(val["outputs"]) and len(val["outputs"]) == len(val["targets"]):
                self.val_outputs, self.val_targets = val["outputs"].float(), val["targets"]
        if not self.classes and self.task == "classification" and self.val_outputs is not None and self.val_outputs.ndim == 2:
            self.classes = [str(i) for i in range(self.val_outputs.shape[1])]

    def cfg(self, path: str, default: Any = None) -> Any:
        node: Any = self.config
        for part in path.split("."):
            if not isinstance(node, Mapping) or part not in node:
                return default
            node = node[part]
        return node

    def has(self, path: str) -> bool:
        """Whether advice may name the key ``path``: it is in this run's schema (any key, when the
        config is unknown)."""
        return not self.config or _schema_field(self.config, path) is not None

    def can_lower(self, path: str) -> bool:
        """The key exists and its value is not at its floor (label smoothing 0, dropout 0, ...)."""
        return self._movable(path, lambda value, floor, ceiling: floor is None or value > floor)

    def can_raise(self, path: str) -> bool:
        """The key exists and its value is not at its ceiling (e.g. ``train.epochs`` at 100,000)."""
        return self._movable(path, lambda value, floor, ceiling: ceiling is None or value < ceiling)

    def _movable(self, path: str, room) -> bool:
        if not self.config:
            return True
        field = _schema_field(self.config, path)
        if field is None:
            return False
        value = self.cfg(path)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return True
        return room(value, *_limits(field))

    def series(self, key: str) -> list[tuple[int, float]]:
        """(epoch, value) of every record that has a number under ``key`` (NaN/inf included)."""
        out = []
        for r in self.history:
            v = _num(r.get(key))
            if v is not None:
                out.append((int(r["epoch"]), v))
        return out

    def finite(self, key: str) -> list[tuple[int, float]]:
        return [(e, v) for e, v in self.series(key) if math.isfinite(v)]

    def chance_loss(self) -> float | None:
        """The loss of knowing nothing: ln K for K classes (a uniform guess), 1 for MSE on
        standardised targets (predicting the mean); None when unknown."""
        if self.task == "classification":
            return math.log(len(self.classes)) if len(self.classes) >= 2 else None
        record = self.data_info.get("task")
        loss = self.cfg("train.loss", "auto")
        if loss == "auto" and isinstance(record, Mapping):
            loss = record.get("loss", "mse")
        return 1.0 if loss in ("auto", "mse") else None

    def split_metric(self, split: str, metric: str) -> float | None:
        """The kept model's figure from summary.json, else the last epoch's."""
        figures = self.summary.get(split)
        if isinstance(figures, Mapping) and _num(figures.get(metric)) is not None:
            return _num(figures[metric])
        values = self.series(f"{split}_{metric}")
        return values[-1][1] if values else None

    def best_epoch(self) -> int | None:
        best = _num(self.summary.get("best_epoch"))
        if best is not None:
            return int(best)
        flagged = [int(r["epoch"]) for r in self.history if r.get("best") is True]
        return flagged[-1] if flagged else None

    def record(self, epoch: int | None) -> Mapping[str, Any] | None:
        return next((r for r in self.history if r.get("epoch") == epoch), None) if epoch is not None else None

    def lr_text(self) -> str:
        lr, name = self.cfg("train.optimizer.lr"), self.cfg("train.optimizer.name")
        if lr is None:
            return "`train.optimizer.lr`"
        return f"`train.optimizer.lr` (now {lr:g}{f', {name}' if name else ''})" if isinstance(lr, (int, float)) \
            else f"`train.optimizer.lr` (now {lr})"

    def majority(self) -> tuple[float, str, str] | None:
        """(share, class, how it was measured) of always predicting one class on the validation split."""
        baselines = self.summary.get("baselines")
        if isinstance(baselines, Mapping):
            val = (baselines.get("majority_class") or {}).get("val") or {}
            if _num(val.get("accuracy")) is not None:
                return float(val["accuracy"]), "the training split's most common class", "majority_class baseline"
        counts = self.data_info.get("class_counts")
        if isinstance(counts, Mapping) and isinstance(counts.get("val"), (list, Mapping)):
            val = counts["val"]
            pairs = list(val.items()) if isinstance(val, Mapping) else [(self._name(i), c) for i, c in enumerate(val)]
            total = sum(float(c) for _, c in pairs)
            if total > 0:
                name, top = max(pairs, key=lambda p: float(p[1]))
                return float(top) / total, repr(str(name)), "data.json class counts"
        if self.val_targets is not None and self.val_targets.ndim == 1 and not self.val_targets.dtype.is_floating_point:
            counts = torch.bincount(self.val_targets.long().cpu())
            top = int(counts.argmax())
            return float(counts[top]) / len(self.val_targets), repr(self._name(top)), "validation labels"
        return None

    def _name(self, index: int) -> str:
        return self.classes[index] if 0 <= index < len(self.classes) else str(index)

    def is_images(self) -> bool:
        shape = self.data_info.get("input_shape")
        return isinstance(shape, list) and len(shape) == 3


# ------------------------------------------------------------------ the rules


def _divergence(run: _Run) -> list[dict[str, str]]:
    train, val = run.series("train_loss"), run.series("val_loss")
    bad = [(e, v, s) for s, points in (("training", train), ("validation", val)) for e, v in points if not math.isfinite(v)]
    if not (run.error or bad):
        return []
    if run.error:
        cause = str(run.error).split(". Fix:")[0].rstrip(".")
        evidence = f"{cause}."
    else:
        epoch, value, which = bad[0]
        evidence = f"the {which} loss became {value} at epoch {epoch}"
        before = [(e, v) for e, v in run.finite("train_loss") if e < epoch]
        evidence += f" (the training loss was {_g(before[-1][1])} at epoch {before[-1][0]})." if before else "."
    if run.error and "input batch itself" in str(run.error):
        return [_finding(
            "bad_data", evidence,
            "Find and remove the NaN/inf values in the data (for a table, declare the column's kind in "
            "`data.columns` or leave it out with `data.features`); the learning rate is not the cause.",
        )]
    return [_finding(
        "lr_too_high", "Training diverged: " + evidence[0].lower() + evidence[1:],
        f"Lower {run.lr_text()} by 10x, or set `train.optimizer.lr: auto` (a range test picks it); "
        + _clip_advice(run) + ".",
    )]


def _clip_advice(run: _Run) -> str:
    clip = run.cfg("train.clip_grad_norm")
    if clip:
        return f"lower `train.clip_grad_norm` from {clip:g}"
    return "set `train.clip_grad_norm: 1.0` to cap each update"


def _unstable(run: _Run) -> list[dict[str, str]]:
    losses = run.finite("train_loss")
    if not losses:
        return []
    chance = run.chance_loss()
    first = losses[0][1]
    ref = chance if chance else first
    reasons = []
    if chance:
        above = [(e, v) for e, v in losses if v > LOSS_BLOWUP * chance]
        if above:
            peak = max(above, key=lambda p: p[1])
            reasons.append(
                f"the training loss was above {LOSS_BLOWUP:g}x that of a uniform guess ({_g(chance)}) in {len(above)} of "
                f"{len(losses)} epochs (highest {_g(peak[1])} at epoch {peak[0]}; last {_g(losses[-1][1])})"
            )
    elif len(losses) >= 2:
        peak = max(losses[1:], key=lambda p: p[1])
        if peak[1] > LOSS_BLOWUP * first:
            reasons.append(f"the training loss rose to {_g(peak[1])} at epoch {peak[0]}, {peak[1] / first:.1f}x its first epoch's")
    if len(losses) >= 3:
        low_epoch, low = min(losses, key=lambda p: p[1])
        last_epoch, last = losses[-1]
        if low_epoch != last_epoch and last > RISE_FACTOR * low and last - low > RISE_ABS * ref:
            reasons.append(
                f"the training loss rose from its lowest, {_g(low)} at epoch {low_epoch}, to {_g(last)} at epoch {last_epoch}"
            )
    if len(losses) >= 4:
        ups = sum(
            1 for (_, a), (_, b) in zip(losses, losses[1:]) if b > a * (1 + OSC_JUMP) and b - a > NOISE_FLOOR * ref
        )
        if ups >= 2 and ups >= OSC_FRACTION * (len(losses) - 1):
            reasons.append(
                f"it went up by more than {OSC_JUMP:.0%} from one epoch to the next {ups} times in {len(losses) - 1}"
            )
    if not reasons:
        return []
    return [_finding(
        "lr_too_high", _sentence("; ".join(reasons)) + " The steps are too large to settle into a minimum.",
        f"Lower {run.lr_text()} by 3-10x (or find it with `train.optimizer.lr: auto`); "
        + _clip_advice(run) + _warmup_advice(run)
    )]


def _warmup_advice(run: Any) -> str:
    for key in ("warmup_steps", "warmup"):
        if run.cfg(f"train.{key}"):
            return f", or warm up longer (raise `train.{key}` from {run.cfg(f'train.{key}')})."
    return ", or warm up with `train.warmup` (a fraction of the steps) or `train.warmup_steps`."


def _sentence(text: str) -> str:
    return text[0].upper() + text[1:] + ("" if text.endswith(".") else ".")


def _collapse(run: _Run) -> list[dict[str, str]]:
    if run.task != "classification" or run.val_outputs is None or run.val_outputs.ndim != 2:
        return []
    predicted = run.val_outputs.argmax(dim=1)
    counts = torch.bincount(predicted, minlength=run.val_outputs.shape[1])
    top = int(counts.argmax())
    n = len(predicted)
    share = float(counts[top]) / n
    true_share = float((run.val_targets.long() == top).sum()) / n
    if share < COLLAPSE_SHARE or true_share >= COLLAPSE_SHARE:
        return []
    distinct = int((counts > 0).sum())
    balance = [f"`{key}: balanced`" for key in ("train.class_weights", "data.sampler")
               if run.has(key) and run.cfg(key) != "balanced"]
    balance_text = f"; with imbalanced classes set {' or '.join(balance)}" if balance else ""
    return [_finding(
        "collapse",
        f"The model predicts class {run._name(top)!r} for {int(counts[top])} of {n} validation samples ({_pct(share)}; "
        f"{distinct} distinct class{'es' if distinct != 1 else ''} predicted in all), though only {_pct(true_share)} of them "
        "belong to it: its output hardly depends on the input.",
        f"Lower {run.lr_text()}: a too-large step often leaves a network predicting one class. Check that the "
        f"labels match the inputs{balance_text}.",
    )]


def _gradient_findings(run: _Run) -> list[dict[str, str]]:
    info = run.summary.get("gradients") if isinstance(run.summary.get("gradients"), Mapping) else {}
    vanishing_at = _num(info.get("vanishing_below_fraction_of_largest")) or VANISHING
    exploding_at = _num(info.get("exploding_above")) or EXPLODING
    out = []
    if run.gradients:
        total = len(run.gradients)
        vanished: dict[str, list[float]] = {}
        exploded: dict[str, list[tuple[int, float]]] = {}
        largest = []
        for r in run.gradients:
            norms = {k: float(v) for k, v in r["norms"].items() if _num(v) is not None}
            v, x = flag_norms(norms, vanishing_at, exploding_at)
            for layer in v:
                vanished.setdefault(layer, []).append(norms[layer])
            for layer in x:
                exploded.setdefault(layer, []).append((int(_num(r.get("step")) or 0), norms[layer]))
            finite = [n for n in norms.values() if math.isfinite(n)]
            if finite:
                largest.append(max(finite))
        if exploded:
            layer, hits = max(exploded.items(), key=lambda kv: len(kv[1]))
            step, worst = max(hits, key=lambda h: h[1] if math.isfinite(h[1]) else math.inf)
            others = f" (and {len(exploded) - 1} more layer{'s' if len(exploded) > 2 else ''})" if len(exploded) > 1 else ""
            out.append(_exploding(run, f"Layer {layer!r}{others} had a gradient norm above {exploding_at:g} (or non-finite) in "
                                        f"{len(hits)} of {total} records (the largest {_g(worst)}, at step {step})."))
        persistent = {k: v for k, v in vanished.items() if len(v) >= GRAD_PERSIST * total}
        if persistent:
            layer, norms = max(persistent.items(), key=lambda kv: len(kv[1]))
            others = f" (and {len(persistent) - 1} more layer{'s' if len(persistent) > 2 else ''})" if len(persistent) > 1 else ""
            out.append(_vanishing(run, (
                f"Layer {layer!r}{others} had a gradient norm under {vanishing_at:g} of the largest layer's in "
                f"{len(norms)} of {total} records (median {_g(_median(norms))}, against a median largest norm of "
                f"{_g(_median(largest))}): its weights barely change."
            )))
    else:  # no records: the monitor's first flags in summary.json
        if info.get("exploding"):
            layer, step = next(iter(info["exploding"].items()))
            out.append(_exploding(run, f"Layer {layer!r} had a gradient norm above {exploding_at:g} (or non-finite) at step {step} "
                                       f"({len(info['exploding'])} layer(s) flagged)."))
        if info.get("vanishing"):
            layer, step = next(iter(info["vanishing"].items()))
            out.append(_vanishing(run, f"Layer {layer!r} had a gradient norm under {vanishing_at:g} of the largest layer's at step "
                                       f"{step} ({len(info['vanishing'])} layer(s) flagged)."))
    return out


def _median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2] if ordered else float("nan")


def _exploding(run: _Run, evidence: str) -> dict[str, str]:
    norm = " or normalise activations with `model.batch_norm: true`" if run.has("model.batch_norm") \
        and run.cfg("model.batch_norm") is not True else ""
    return _finding(
        "exploding_gradients", evidence,
        f"{_sentence(_clip_advice(run))[:-1]}, {'' if norm else 'or '}lower {run.lr_text()}{',' if norm else ''}{norm}.",
    )


def _vanishing(run: _Run, evidence: str) -> dict[str, str]:
    activation = run.cfg("model.activation")
    steps = []
    if run.has("model.activation"):
        steps.append(f"`model.activation` is {activation}: use relu or gelu"
                     if activation and activation not in ("relu", "gelu", "leaky_relu")
                     else "keep a non-saturating `model.activation` (relu, gelu)")
    if run.has("model.batch_norm") and run.cfg("model.batch_norm") is not True:
        steps.append("add `model.batch_norm: true`")
    if run.cfg("model.init") != "he_normal":
        steps.append("initialise with `model.init: he_normal`")
    if run.has("model.hidden"):
        steps.append("or use fewer layers (`model.hidden`)")
    else:
        steps.append("or use a shallower model")
    return _finding("vanishing_gradients", evidence, _sentence("; ".join(steps)))


def _underfitting(run: _Run) -> list[dict[str, str]]:
    reasons = []
    score, name = ("accuracy", "accuracy") if run.task == "classification" else ("r2", "R²")
    val = run.split_metric("val", score)
    if run.task == "classification":
        majority = run.majority()
        if val is not None and majority is not None and val <= majority[0] + BASELINE_MARGIN:
            reasons.append(
                f"validation accuracy {_pct(val)} is no better than always predicting {majority[1]} "
                f"({_pct(majority[0])}, from the {majority[2]})"
            )
        low = UNDERFIT_ACCURACY
    else:
        if val is not None and val <= R2_FLOOR:
            reasons.append(f"validation R² {val:.3f} is no better than predicting the training mean (R² 0)")
        low = UNDERFIT_R2
    trend = run.finite(f"train_{score}")
    fit = run.split_metric("train", score)
    rising = False
    if fit is not None and fit < low and len(trend) > RISING_EPOCHS:
        gain = trend[-1][1] - trend[-1 - RISING_EPOCHS][1]
        rising = gain >= STILL_RISING
        if rising:
            shown = _pct(fit) if score == "accuracy" else f"{fit:.3f}"
            gained = f"{100 * gain:.1f} points" if score == "accuracy" else f"{gain:+.3f}"
            reasons.append(
                f"training {name} is only {shown} and was still rising at the last epoch ({gained} over the last "
                f"{RISING_EPOCHS} epochs, to epoch {trend[-1][0]})"
            )
    if not reasons:
        return []
    advice = []
    if rising and run.can_raise("train.epochs"):
        epochs = run.cfg("train.epochs")
        advice.append(f"train longer (raise `train.epochs`{f' from {epochs}' if epochs else ''}"
                      + (", and `train.early_stopping.patience`)" if run.summary.get("stopped_early") else ")"))
    size = [f"`model.{key}`, now {run.cfg(f'model.{key}')}" for key in ("hidden", "filters") if run.cfg(f"model.{key}") is not None]
    if size:
        advice.append("use a bigger model (" + " or ".join(size) + ")")
    elif run.cfg("model.name") == "softmax":
        advice.append("use a model with hidden layers (`model.name: mlp` or `cnn`)")
    elif not run.config:
        advice.append("use a bigger model (`model.hidden`, `model.filters`)")
    else:
        advice.append("use a bigger model")
    reg = [f"lower `{key}` from {run.cfg(key):g}"
           for key in ("model.dropout", "model.head_dropout", "train.l1", "train.l2", "train.optimizer.weight_decay")
           if _num(run.cfg(key)) and run.can_lower(key)]
    if reg:
        advice.append("regularise less (" + ", ".join(reg) + ")")
    advice.append(f"and check {run.lr_text()}")
    return [_finding("underfitting", _sentence("; ".join(reasons)) + " The model has not learned the training data.",
                     _sentence(", ".join(advice)))]


def _lr_too_low(run: _Run) -> list[dict[str, str]]:
    losses = run.finite("train_loss")
    if len(losses) < LR_LOW_MIN_EPOCHS:
        return []
    first = losses[0][1]
    low_epoch, low = min(losses, key=lambda p: p[1])
    if first <= 0 or (first - low) / first >= LR_LOW_CHANGE:
        return []
    chance = run.chance_loss()
    if chance is not None and first < LR_LOW_NEAR_CHANCE * chance:
        return []  # it learned in the first epoch, then stalled: not the learning rate's size
    score, fitted = ("accuracy", UNDERFIT_ACCURACY) if run.task == "classification" else ("r2", UNDERFIT_R2)
    fit = run.split_metric("train", score)
    if fit is not None and fit >= fitted:
        return []  # converged already (e.g. L-BFGS in its first epoch)
    last_epoch, last = losses[-1]
    near = f" (a uniform guess scores {_g(chance)})" if chance is not None else ""
    return [_finding(
        "lr_too_low",
        f"The training loss went from {_g(first)} at epoch {losses[0][0]} to {_g(last)} at epoch {last_epoch}{near}, "
        f"a {100 * (first - low) / first:.1f}% change over {len(losses)} epochs, with {run.lr_text()}.",
        f"Raise {run.lr_text()} 10-100x, or set `train.optimizer.lr: auto` (or run `deepworks lr-find CONFIG`) "
        "to have a range test pick it.",
    )]


def _overfitting(run: _Run) -> tuple[list[dict[str, str]], str]:
    """The finding, or a note for the healthy entry when early stopping caught it."""
    val = run.finite("val_loss")
    if len(val) < OVERFIT_EPOCHS + 2:
        return [], ""
    low_epoch, low = min(val, key=lambda p: p[1])
    after = [v for e, v in val if e > low_epoch]
    if len(after) < OVERFIT_EPOCHS:
        return [], ""
    tail = [v for _, v in val[-OVERFIT_EPOCHS:]]
    rise = sum(tail) / len(tail) - low
    if rise < OVERFIT_RISE * low or rise < OVERFIT_MIN_RISE * (run.chance_loss() or val[0][1]):
        return [], ""
    train = dict(run.finite("train_loss"))
    last_epoch = val[-1][0]
    if low_epoch not in train or last_epoch not in train or train[last_epoch] >= train[low_epoch]:
        return [], ""
    patience = run.cfg("train.early_stopping.patience")
    if run.summary.get("stopped_early") and (patience is None or len(after) <= patience):
        return [], (f"early stopping ended the run at epoch {last_epoch}, {len(after)} epochs after the validation "
                    f"loss's lowest ({_g(low)} at epoch {low_epoch})")
    evidence = (
        f"The validation loss was lowest at epoch {low_epoch} ({_g(low)}) and stayed above it for the next {len(after)} "
        f"epochs, ending at {_g(val[-1][1])} ({100 * (val[-1][1] / low - 1):+.0f}%), while the training loss kept "
        f"falling ({_g(train[low_epoch])} -> {_g(train[last_epoch])}). Train/val gap at the last epoch ({last_epoch}): "
        + _gap(run.record(last_epoch))
    )
    best = run.best_epoch()
    if best is not None and best != last_epoch and run.record(best) is not None:
        evidence += f"; at the best epoch ({best}, the kept model): " + _gap(run.record(best))
    evidence += "."
    advice = []
    es = run.cfg("train.early_stopping")
    if run.config and es is None:
        advice.append(f"set `train.early_stopping: {{monitor: val_loss, patience: 5}}` (the run went on {len(after)} "
                      "epochs past the minimum)")
    elif isinstance(es, Mapping) and es.get("patience") and run.can_lower("train.early_stopping.patience"):
        advice.append(f"lower `train.early_stopping.patience` from {es['patience']}")
    elif not run.config:
        advice.append("set `train.early_stopping: {monitor: val_loss, patience: 5}`")
    for key in ("dropout", "head_dropout"):
        value = run.cfg(f"model.{key}")
        # past 0.5, more dropout mostly slows learning: no advice to raise it further
        if isinstance(value, (int, float)) and value < 0.5 and run.can_raise(f"model.{key}"):
            advice.append(f"raise `model.{key}` from {value:g} (e.g. to {min(0.5, max(0.3, value + 0.2)):g})")
    if not run.config:
        advice.append("raise `model.dropout`")
    l2 = run.cfg("train.l2")
    advice.append(f"raise `train.l2` from {l2:g}" if l2 else "add `train.l2` (e.g. 1e-4)")
    hidden = run.cfg("model.hidden")
    if hidden and (not isinstance(hidden, int) or run.can_lower("model.hidden")):
        advice.append(f"use a smaller model (`model.hidden` is {hidden})")
    if run.is_images() and not run.cfg("data.augment"):
        advice.append("augment the training images with `data.augment` (e.g. [{random_crop: {padding: 2}}, {rotate: 10}])")
    advice.append("or train on more data")
    return [_finding("overfitting", evidence, _sentence(", ".join(advice)))], ""


def _gap(record: Mapping[str, Any] | None) -> str:
    if record is None:
        return "unknown"
    parts = []
    tl, vl = _num(record.get("train_loss")), _num(record.get("val_loss"))
    if tl is not None and vl is not None:
        parts.append(f"loss {_g(tl)} vs {_g(vl)} ({_g(vl - tl)} apart)")
    ta, va = _num(record.get("train_accuracy")), _num(record.get("val_accuracy"))
    if ta is not None and va is not None:
        parts.append(f"accuracy {_pct(ta)} vs {_pct(va)} ({100 * (ta - va):.1f} points)")
    tr, vr = _num(record.get("train_r2")), _num(record.get("val_r2"))
    if tr is not None and vr is not None:
        parts.append(f"R² {tr:.3f} vs {vr:.3f}")
    return ", ".join(parts) or "unknown"


def _behind_baseline(run: _Run) -> list[dict[str, str]]:
    """The network does worse on the validation split than a simple model fitted on the same
    training data (logistic regression, TF-IDF + logistic regression, Ridge, the last value)."""
    baselines = run.summary.get("baselines")
    if not isinstance(baselines, Mapping):
        return []
    accuracy = run.task == "classification"
    metric = "accuracy" if accuracy else "mae"
    val = run.split_metric("val", metric)
    scored = [
        (name, _num(((figures or {}).get("val") or {}).get(metric)))
        for name, figures in baselines.items()
        if name != "majority_class" and isinstance(figures, Mapping)
    ]
    scored = [(name, v) for name, v in scored if v is not None and math.isfinite(v)]
    if val is None or not math.isfinite(val) or not scored:
        return []
    if accuracy:
        name, best = max(scored, key=lambda p: p[1])
        if val >= best - BEHIND_ACCURACY:
            return []
        gap = f"validation accuracy {_pct(val)} against {_pct(best)} for the `{name}` baseline"
    else:
        name, best = min(scored, key=lambda p: p[1])
        if val <= best * (1 + BEHIND_ERROR):
            return []
        gap = f"validation MAE {_g(val)} against {_g(best)} for the `{name}` baseline"
    evidence = (f"The network does worse than a simple model fitted on the same training data: {gap} "
                "(summary.json `baselines`, the same validation samples).")
    longer = "train longer (raise `train.epochs`" + (f" from {run.cfg('train.epochs')})" if run.cfg("train.epochs") else ")") \
        if run.can_raise("train.epochs") else ""
    if run.task == "forecasting":
        steps = [] if run.cfg("data.difference") is True else \
            ["let the model predict the change from the last value (`data.difference: true`)"]
        steps.append("give it more history (raise `data.lookback`" + (f" from {run.cfg('data.lookback')})" if run.cfg("data.lookback") else ")"))
        steps += [longer] if longer else []
        advice = _sentence(", ".join(steps[:-1]) + (", or " if len(steps) > 1 else "") + steps[-1]) [:-1] + \
            f"; until it beats `{name}`, use that."
    elif (run.data_info.get("input") or {}).get("kind") == "tokens":
        steps = [longer] if longer else []
        steps.append("tune `train.optimizer.lr`")
        if run.has("model.pool") and run.cfg("model.pool") not in ("max", "mean"):
            steps.append("pool over all steps (`model.pool: max`)")
        if run.has("model.embedding_dropout") and not run.cfg("model.embedding_dropout"):
            steps.append("drop parts of the embeddings (`model.embedding_dropout: 0.3`)")
        words = (["raise `data.max_vocab`" + (f" from {run.cfg('data.max_vocab')}" if run.cfg("data.max_vocab") else "")]
                 + ([f"lower `data.min_freq` from {run.cfg('data.min_freq')}" if run.cfg("data.min_freq") else "lower `data.min_freq`"]
                    if run.can_lower("data.min_freq") else []))
        steps.append("or keep more words (" + ", ".join(words) + ")")
        advice = _sentence(", ".join(steps))[:-1] + f"; until it beats `{name}`, use that."
    else:
        steps = [longer] if longer else []
        steps.append(f"tune {run.lr_text()}")
        dropout = _num(run.cfg("model.dropout"))
        if not run.config:
            steps.append("or try a smaller model with less dropout (`model.dropout`)")
        elif dropout and run.can_lower("model.dropout"):
            steps.append(f"or try a smaller model with less dropout (lower `model.dropout` from {dropout:g})")
        else:
            steps.append("or try a smaller model")
        advice = _sentence(", ".join(steps))[:-1] + f"; on small tables `{name}` may simply be the better model."
    return [_finding("behind_baseline", evidence, advice)]


def _calibration(run: _Run) -> list[dict[str, str]]:
    if run.task != "classification" or run.val_outputs is None or run.val_outputs.ndim != 2:
        return []
    n = len(run.val_targets)
    if n < CALIBRATION_MIN_SAMPLES:
        return []
    from deepworks.evaluation.calibration import calibration

    probs = torch.softmax(run.val_outputs.double(), dim=1)
    result = calibration(probs, run.val_targets.long())
    if not result["ece"] > ECE_THRESHOLD:
        return []
    confidence = float(probs.max(dim=1).values.mean())
    accuracy = float((probs.argmax(dim=1) == run.val_targets.long()).double().mean())
    over = confidence > accuracy
    smoothing = run.cfg("train.label_smoothing")
    evidence = (
        f"On the {n} validation samples the mean confidence is {_pct(confidence)} but the accuracy {_pct(accuracy)}: "
        f"expected calibration error {result['ece']:.3f} (above {ECE_THRESHOLD:g}; {len(result['bins'])} bins). The model "
        f"is {'over' if over else 'under'}confident: its probabilities should not be read as chances."
    )
    smoothing = _num(smoothing)
    steps = []
    if over:
        if smoothing is None or smoothing < 0.1:
            steps.append(f"raise `train.label_smoothing`{f' from {smoothing:g}' if smoothing is not None else ''} to 0.1")
        es = run.cfg("train.early_stopping")
        if isinstance(es, Mapping) and es.get("patience"):
            if run.can_lower("train.early_stopping.patience"):
                steps.append(f"stop earlier (lower `train.early_stopping.patience` from {es['patience']})")
        else:
            steps.append("stop earlier (`train.early_stopping`)")
        l2 = _num(run.cfg("train.l2"))
        steps.append(f"or regularise (raise `train.l2` from {l2:g})" if l2 else "or regularise (add `train.l2`, e.g. 1e-4)")
        advice = _sentence(", ".join(steps))[:-1] + "; overconfidence grows as a network overfits."
    else:
        # underconfidence: label smoothing that pulls the targets off 0/1, strong weight penalties that keep
        # the logits small, or a network stopped before it grew sure of itself
        if smoothing is None and not run.config:
            steps.append("lower `train.label_smoothing`")
        elif smoothing and run.can_lower("train.label_smoothing"):
            steps.append(f"lower `train.label_smoothing` from {smoothing:g}")
        l2 = _num(run.cfg("train.l2"))
        if l2 and run.can_lower("train.l2"):
            steps.append(f"lower `train.l2` from {l2:g}")
        epochs = run.cfg("train.epochs")
        if not run.summary.get("stopped_early") and run.can_raise("train.epochs"):
            steps.append(f"train longer (raise `train.epochs`{f' from {epochs}' if epochs else ''})")
        if steps:
            advice = _sentence(", ".join(steps[:-1]) + (", or " if len(steps) > 1 else "") + steps[-1])
        else:
            advice = ("Read its probabilities as scores, not chances, or rescale them on held-out data "
                      "(temperature scaling) before reading them as chances.")
    return [_finding("poor_calibration", evidence, advice)]


def _healthy(run: _Run, note: str) -> dict[str, str]:
    score = "accuracy" if run.task == "classification" else "r2"
    val, fit = run.split_metric("val", score), run.split_metric("train", score)
    parts = []
    if val is not None and fit is not None:
        if score == "accuracy":
            parts.append(f"validation accuracy {_pct(val)} (training {_pct(fit)}, a gap of {100 * (fit - val):.1f} points)")
        else:
            parts.append(f"validation R² {val:.3f} (training {fit:.3f})")
    elif fit is not None:
        shown = f"accuracy {_pct(fit)}" if score == "accuracy" else f"R² {fit:.3f}"
        parts.append(f"training {shown} (no validation split)")
    val_loss = run.finite("val_loss")
    if val_loss:
        low_epoch, low = min(val_loss, key=lambda p: p[1])
        parts.append(f"validation loss lowest at epoch {low_epoch} ({_g(low)})")
    best, epochs = run.best_epoch(), run.summary.get("epochs_run") or (run.history[-1]["epoch"] if run.history else None)
    if best is not None:
        parts.append(f"kept model from epoch {best} of {epochs}")
    if note:
        parts.append(note)
    evidence = "No problem found: " + "; ".join(parts) + "." if parts else "No problem found."
    size = [f"`model.{key}`" for key in ("hidden", "filters") if run.has(f"model.{key}")]
    bigger = "hidden layers (`model.name: mlp` or `cnn`)" if run.cfg("model.name") == "softmax" \
        else f"a bigger model ({', '.join(size)})" if size else "a bigger model"
    return _finding(
        "healthy", evidence,
        f"Nothing to fix. To do better, compare runs that change one thing: {bigger}, `data.augment`, or "
        "`train.epochs` with `train.early_stopping`.",
    )


def diagnose(
    history: Sequence[Mapping[str, Any]] | None,
    summary: Mapping[str, Any] | None = None,
    *,
    predictions: Mapping[str, Any] | None = None,
    gradients: Sequence[Mapping[str, Any]] | None = None,
    data_info: Mapping[str, Any] | None = None,
    config: Any = None,
    error: str | None = None,
) -> list[dict[str, str]]:
    """Findings about a run, most serious first, each ``{"kind", "evidence", "advice"}``.

    ``history``: the per-epoch records (``metrics.jsonl``); ``summary``: ``summary.json``;
    ``predictions``: :func:`~deepworks.evaluation.predictions.load_predictions`' result (its
    ``val`` outputs and targets); ``gradients``: the records of ``gradients.jsonl``;
    ``data_info``: ``data.json`` (class names; ``class_counts`` per split when present);
    ``config``: the run's :class:`~deepworks.config.Config` or its mapping (``config.yaml``),
    so the advice can quote the run's values; ``error``: the message a run stopped with (a
    divergence). Every argument but ``history`` may be missing; a rule whose inputs are
    missing is skipped. With nothing found, one ``healthy`` entry states the key figures.
    """
    run = _Run(history, summary, predictions, gradients, data_info, config, error)
    findings: list[dict[str, str]] = []
    if not run.history:
        findings.append(_finding(
            "metrics_missing",
            "No epoch was recorded (metrics.jsonl is missing or empty), so the training curves cannot be judged.",
            "Let the run finish at least one epoch (`train.epochs`), or resume it with "
            "`deepworks train --resume RUN_DIR`.",
        ))
    diverged = _divergence(run)
    findings += diverged
    if not diverged:
        findings += _unstable(run)
    findings += _collapse(run)
    findings += _gradient_findings(run)
    findings += _underfitting(run)
    if not any(f["kind"] == "lr_too_high" for f in findings):
        findings += _lr_too_low(run)
    overfit, note = _overfitting(run)
    findings += overfit
    if not any(f["kind"] in ("lr_too_high", "collapse") for f in findings):
        findings += _behind_baseline(run)
    if not any(f["kind"] in _BROKEN for f in findings):  # the calibration of a broken model is beside the point
        findings += _calibration(run)
    if not findings:
        findings.append(_healthy(run, note))
    return findings


def render_diagnosis(findings: Sequence[Mapping[str, str]]) -> str:
    """The findings as console text: one short paragraph each."""
    lines = ["diagnosis:"]
    for f in findings:
        label = _LABELS.get(f.get("kind", ""), f.get("kind", ""))
        lines.append(f"  {label}: {f.get('evidence', '')} Next: {f.get('advice', '')}")
    return "\n".join(lines)


def diagnose_run(run_dir: str | Path) -> list[dict[str, str]]:
    """:func:`diagnose` from a run directory's files. A missing or cut-short ``metrics.jsonl``
    (or other file) is no error: the diagnosis uses what is there and says what was missing."""
    from deepworks.errors import CheckpointError, DeepworksError
    from deepworks.evaluation.predictions import load_predictions
    from deepworks.runs import RunDir

    run = RunDir(run_dir)
    if not run.path.is_dir():
        raise CheckpointError(f"{run.path}: no such run directory.")

    def read(path: Path) -> dict[str, Any]:
        try:
            value = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return value if isinstance(value, dict) else {}

    summary, data_info = read(run.summary), read(run.data)
    config = _read_config(run.path)
    history, cut = _read_history(run.metrics)
    try:
        predictions = load_predictions(run.predictions)
    except (DeepworksError, OSError, ValueError):
        predictions = None
    gradients, _ = _read_history(run.gradients)
    findings = diagnose(
        history, summary, predictions=predictions, gradients=gradients, data_info=data_info, config=config,
        error=summary.get("diverged") if isinstance(summary.get("diverged"), str) else None,
    )
    run_epochs = _num(summary.get("epochs_run"))
    if history and (cut is not None or (run_epochs is not None and run_epochs > len(history))):
        what = f"line {cut} of metrics.jsonl is cut short or damaged" if cut is not None else "metrics.jsonl is short"
        ran = f" (summary.json says {int(run_epochs)} epochs ran)" if run_epochs is not None else ""
        findings.insert(0, _finding(
            "metrics_missing",
            f"{_sentence(what)[:-1]}: the diagnosis judges the {len(history)} epoch(s) recorded before it{ran}.",
            "The figures of later epochs are lost; a complete log needs the run trained again "
            "(or resumed from its checkpoint with `deepworks train --resume RUN_DIR`, `train.epochs` unchanged).",
        ))
    return findings


def _read_config(path: Path) -> dict[str, Any]:
    import yaml

    for name, wrap in (("config.yaml", False), ("trainer.yaml", True)):
        try:
            value = yaml.safe_load((path / name).read_text(encoding="utf-8"))
        except (OSError, ValueError, yaml.YAMLError):
            continue
        if isinstance(value, dict):
            return {"train": value} if wrap else value
    return {}


def _read_history(path: Path) -> tuple[list[dict[str, Any]], int | None]:
    """The JSON records of a .jsonl file up to the first bad line, and that line's number (or None)."""
    from deepworks.runs import RunDir

    try:
        records, lines = RunDir(path.parent).read_jsonl_prefix(path)
    except OSError:
        return [], None
    return records, (len(records) + 1 if len(records) < lines else None)
