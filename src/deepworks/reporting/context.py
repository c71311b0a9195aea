"""What the report reads from a run directory, read once and tolerantly.

:func:`load_context` needs only ``config.yaml``; every other file may be missing, cut short
or damaged (a run killed mid-epoch, a file deleted by hand). Each such file is recorded in
``RunContext.problems`` (file name -> what is wrong) and the sections that need it say so,
so a report is written for whatever is there, never a traceback.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deepworks.config import Config, load_run_config
from deepworks.errors import CheckpointError, DeepworksError
from deepworks.evaluation.predictions import load_predictions
from deepworks.runs import RunDir

__all__ = ["RunContext", "load_context"]


@dataclass
class RunContext:
    """One run directory's files as the report's sections see them (None: missing or unreadable)."""

    path: Path
    config_text: str
    config: Config | None = None
    data: dict[str, Any] | None = None
    summary: dict[str, Any] | None = None
    metrics: list[dict[str, Any]] = field(default_factory=list)
    test_report: dict[str, Any] | None = None
    gradients: list[dict[str, Any]] = field(default_factory=list)
    predictions: dict[str, Any] | None = None  # as load_predictions returns it
    problems: dict[str, str] = field(default_factory=dict)  # file name -> what is wrong with it

    @property
    def task(self) -> str:
        """The task's name (``classification``, ``regression``, ...), from data.json or summary.json."""
        record = (self.data or {}).get("task") or {}
        return str(record.get("name") or (self.summary or {}).get("task") or "classification")

    @property
    def task_record(self) -> dict[str, Any]:
        return dict((self.data or {}).get("task") or {})

    @property
    def classes(self) -> list[str]:
        if self.data and self.data.get("classes"):
            return [str(c) for c in self.data["classes"]]
        if self.test_report and self.test_report.get("classes"):
            return [str(c) for c in self.test_report["classes"]]
        return []

    @property
    def is_image(self) -> bool:
        return bool(self.data) and len(self.data.get("input_shape") or ()) == 3

    def missing(self, *names: str) -> str | None:
        """A short sentence about the first of ``names`` that has a problem, or None."""
        for name in names:
            if name in self.problems:
                return f"{name}: {self.problems[name]}."
        return None


def _reason(exc: Exception, file: Path) -> str:
    """The error's message without the file's path in front (the note names the file)."""
    text = str(exc)
    return text[len(str(file)) + 2:] if text.startswith(f"{file}: ") else text


def _read_json(run: RunDir, name: str, problems: dict[str, str]) -> Any:
    file = run.path / name
    if not file.exists():
        problems[name] = "missing"
        return None
    try:
        value = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        problems[name] = f"unreadable, not valid JSON ({exc}); the file was cut short or edited"
        return None
    if not isinstance(value, dict):
        problems[name] = f"expected a JSON object, found a {type(value).__name__}"
        return None
    return value


def _read_jsonl(run: RunDir, name: str, problems: dict[str, str], unit: str) -> list[dict[str, Any]]:
    """The records before the first bad line (:meth:`RunDir.read_jsonl_prefix`), with a problem
    recorded when lines were dropped."""
    records, lines = run.read_jsonl_prefix(run.path / name)
    if len(records) < lines:
        last = f"{unit} {records[-1].get(unit)}" if records and unit in records[-1] else "the start"
        problems[name] = (
            f"truncated: line {len(records) + 1} of {lines} is cut short or not JSON (a run killed while "
            f"writing it?); what follows is lost and the figures stop at {last}"
        )
    return records


def load_context(run_dir: str | Path) -> RunContext:
    """Read a run directory for the report. Not a run directory (no ``config.yaml``) is a
    :class:`CheckpointError`; anything else missing is recorded in ``problems``."""
    run = RunDir(run_dir)
    if not run.path.is_dir():
        raise CheckpointError(f"{run.path}: no such run directory.")
    if not run.config.is_file():
        raise CheckpointError(f"{run.path}: not a deepworks run directory (no config.yaml).")
    problems: dict[str, str] = {}
    text = run.config.read_text(encoding="utf-8", errors="replace")
    config = None
    try:
        config = load_run_config(run.config)
    except DeepworksError as exc:
        problems["config.yaml"] = f"does not load as a config ({_reason(exc, run.config)})"
    ctx = RunContext(run.path, text, config, problems=problems)
    ctx.data = _read_json(run, "data.json", problems)
    ctx.summary = _read_json(run, "summary.json", problems)
    ctx.test_report = _read_json(run, "test_report.json", problems)
    if not run.metrics.exists():
        problems["metrics.jsonl"] = "missing (the run has not finished an epoch)"
    ctx.metrics = _read_jsonl(run, "metrics.jsonl", problems, "epoch")
    ctx.gradients = _read_jsonl(run, "gradients.jsonl", problems, "step")
    try:
        ctx.predictions = load_predictions(run.predictions)
    except DeepworksError as exc:
        problems[run.predictions.name] = "missing" if not run.predictions.exists() else _reason(exc, run.predictions)
    return ctx
