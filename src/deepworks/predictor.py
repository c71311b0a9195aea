"""A trained run, loaded once, answering for inputs of any number: :class:`Predictor`.

The run's kind module (:mod:`deepworks.kinds`) turns whatever the user has (image files, folders,
glob patterns, CSV or Parquet files, arrays, tensors, PIL images, DataFrames, strings) into model
inputs a batch at a time; the model runs each batch on the device; only the answers are kept.
Memory is bounded by the batch, not by the number of inputs::

    p = deepworks.Predictor("runs/photos")
    p.predict("holiday/", top_k=3)            # a list of dicts, one per image
    p.predict_proba(["a.jpg", "b.jpg"])       # numpy (2, classes)

``deepworks.predict``, ``deepworks predict`` and ``deepworks serve`` all go through it.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from deepworks.config import Config
from deepworks.data.folders import FileProgress
from deepworks.data.tabular import is_frame
from deepworks.errors import CheckpointError, ConfigError, DataError
from deepworks.kinds import RunInputs, inputs_for_run, new_model
from deepworks.models.external import run_config
from deepworks.models.gan import is_adversarial
from deepworks.runs import RunDir, existing_run
from deepworks.runtime import has_conv, resolve_device, return_large_blocks
from deepworks.training import load_model_weights
from deepworks.training.memory import device_memory, inference_batch_size
from deepworks.training.step import with_tta
from deepworks.training.tasks import Classification, Task, task_from_record

__all__ = ["Predictor", "PredictionWriter", "Run", "load_run", "predict"]

# predict's default batch: at most MAX_BATCH inputs, and a forward pass within BATCH_BYTES (a larger
# batch is hardly faster on a CPU, and memory stays small whatever the number of inputs)
MAX_BATCH = 256
BATCH_BYTES = 256 * 2**20


@dataclass
class Run:
    """A run directory with its config, model (best weights) and results."""

    dir: Path
    config: Config
    model: nn.Module
    classes: list[str]  # class names; empty for regression
    history: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    task: Task = field(default_factory=Classification)

    def __repr__(self) -> str:  # the model, history and config are long: a notebook's text shows the gist
        test = self.summary.get("test") if isinstance(self.summary, dict) else None
        figures = "".join(f", test {k}={v:.4f}" for k, v in (test or {}).items()
                          if k in ("accuracy", "r2", "mae") and isinstance(v, float))
        return f"Run({str(self.dir)!r}, model={self.config.model.name!r}{figures})"

    def _repr_html_(self) -> str:
        """Jupyter's view of the run: its key figures, learning curves and report (:mod:`deepworks.inline`)."""
        from deepworks.inline import run_card

        return run_card(self)


def load_run(run_dir: str | Path) -> Run:
    """Open a finished (or interrupted) run: config, classes and the best model's weights."""
    run = existing_run(run_dir)
    cfg = run_config(run.path)  # a model from outside deepworks: imported as the run recorded it
    if is_adversarial(cfg.model.name):
        raise ConfigError(f"{run.path}: a GAN run ({cfg.model.name}) has a generator, not a classifier. "
                          f"Fix: `deepworks generate {run.path} --n 16 --out DIR`, or deepworks.generate(...).")
    info = run.read_json(run.data)
    classes, shape = list(info["classes"]), tuple(info["input_shape"])
    task = task_from_record(info.get("task"), classes)
    model = new_model(cfg, shape, task, info, load=False)  # its own weights, below
    if not run.best.exists():
        raise CheckpointError(
            f"{run.best}: missing; the run has not finished an epoch yet. "
            f"Resume it with `deepworks train --resume {run.path}`."
        )
    load_model_weights(model, run.best)
    model.eval()
    summary = run.read_json(run.summary) if run.summary.exists() else {}
    return Run(run.path, cfg, model, classes, run.read_metrics(), summary, task)


class Predictor:
    """A run's best model and its fitted input path, loaded once.

    ``device``: ``cpu``, ``cuda``, ... (default: the GPU when there is one). ``batch_size``: rows
    per forward pass (default: up to 256, fewer for large inputs). ``workers``: processes that
    decode image files (default: up to 2; 0 decodes in this process). ``progress``: a progress
    bar on long inputs (default: when stderr is a terminal).
    """

    def __init__(
        self, run_dir: str | Path, device: str | None = None, batch_size: int | None = None, *,
        workers: int | None = None, progress: bool | None = None,
    ):
        if batch_size is not None and (isinstance(batch_size, bool) or int(batch_size) < 1):
            raise ConfigError(f"Predictor: batch_size must be a positive integer, got {batch_size!r}.")
        self.run = load_run(run_dir)
        self.dir, self.task, self.classes = self.run.dir, self.run.task, self.run.classes
        self.info = RunDir(self.dir).read_json(RunDir(self.dir).data)
        self.inputs: RunInputs = inputs_for_run(self.dir, self.info)
        self.kind = self.inputs.kind
        self.inputs.load()
        self.device = resolve_device(device or "auto")
        return_large_blocks()  # batch after batch, memory stays flat (see the function)
        model = self.run.model.to(self.device).eval()
        # a CNN on images in fp32 reads channels_last fastest (oneDNN, cuDNN): 2.5x on this project's
        # 2-core CPU for the default cnn at 224x224; the same numbers to within float rounding
        self.channels_last = self.inputs.channels_last and has_conv(model)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = with_tta(model, self.run.config.train.tta)  # train.tta: hflip averages images with their mirror
        self.batch_size = int(batch_size) if batch_size is not None else self._default_batch()
        self.workers = min(2, os.cpu_count() or 1) if workers is None else max(0, int(workers))
        self.progress = progress
        self.skipped: list[dict[str, Any]] = []  # the inputs the last call refused (on_error="skip")

    def _default_batch(self) -> int:
        """The largest batch up to :data:`MAX_BATCH` whose forward pass (inputs and every layer's
        activations, estimated by :mod:`deepworks.training.memory`) fits :data:`BATCH_BYTES`, and the
        device's free memory: predicting keeps a small footprint whatever the number of inputs."""
        available = min(device_memory(self.device), BATCH_BYTES)
        return inference_batch_size(self.run.model, self.inputs.shape, available, cap=MAX_BATCH,
                                    input_dtype=self.inputs.input_dtype, stored_dtype=self.inputs.stored_dtype)

    # -- the model --
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """A batch in the kind's raw form -> the model's outputs, float32 on the CPU."""
        with torch.inference_mode():
            x = self.inputs.to_model(x.to(self.device))
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            return self.model(x).float().cpu()

    def outputs(self, inputs: Any, on_error: str = "raise") -> Iterator[tuple[list[dict[str, Any]], torch.Tensor]]:
        """(where each row came from, the model's outputs) a batch at a time; refused inputs are
        raised (``on_error="raise"``) or collected in :attr:`skipped` (``"skip"``)."""
        self.skipped = []
        answered = 0
        total = self.inputs.count(inputs) if self._show_progress() else None
        # a bar on long inputs only: a few batches finish before it would be drawn
        bar = FileProgress(total or 0, f"predicting {self.inputs.reads}", total is not None and total >= 2 * MAX_BATCH,
                           unit=self.inputs.reads, stderr=True)
        try:
            for batch in self.inputs.batches(inputs, self.batch_size, on_error, self.workers):
                for name, reason in batch.errors:
                    self.skipped.append({**name, "error": reason})
                if batch.x is not None and len(batch.names):
                    answered += len(batch.names)
                    yield batch.names, self.forward(batch.x)
                bar.advance(len(batch.names) + len(batch.errors))
        finally:
            bar.close()
        if self.skipped and not answered:
            raise DataError(f"predict: none of the {len(self.skipped)} input(s) could be read (this run reads "
                            f"{self.inputs.reads}); the first: {self.skipped[0]['error']} Fix: give readable "
                            f"{self.inputs.reads}.")
        if self.skipped:
            first = self.skipped[0]["error"]
            warnings.warn(f"predict: {len(self.skipped)} input(s) skipped (on_error='skip'); the first: {first}",
                          stacklevel=3)

    def _show_progress(self) -> bool:
        return sys.stderr.isatty() if self.progress is None else bool(self.progress)

    def _forecast(self, inputs: Any, out: str | Path | None) -> list[dict[str, Any]]:
        return self.inputs.forecast(self.run.model, self.task, inputs, Path(out) if out is not None else None)

    def iter_predict(self, inputs: Any, top_k: int = 3, on_error: str = "raise") -> Iterator[dict[str, Any]]:
        """:meth:`predict`'s answers one at a time, as the batches finish."""
        if self.kind == "series":
            yield from self._forecast(inputs, None)
            return
        for names, out in self.outputs(inputs, on_error):
            for name, result in zip(names, self.task.predict(out, top_k)):
                yield {**name, **result}

    def predict(self, inputs: Any, top_k: int = 3, on_error: str = "raise", *, out: str | Path | None = None) -> list[dict[str, Any]]:
        """One dict per input row: ``prediction`` and the ``top_k`` classes with probabilities
        (classification), the value in the target's units (regression), or the forecast of the
        steps after each history, a file or a DataFrame (forecasting; ``out`` as
        :func:`deepworks.predict`'s)."""
        if self.kind == "series":
            return self._forecast(inputs, out)
        if out is not None:
            raise ConfigError("Predictor.predict(out=...): a forecast's file; write other predictions with "
                              "`deepworks predict RUN INPUT --out preds.csv`.")
        return list(self.iter_predict(inputs, top_k, on_error))

    def predict_proba(self, inputs: Any, on_error: str = "raise") -> np.ndarray:
        """Class probabilities (N, classes) for classification; values in the target's units (N,
        targets) for regression, (N, horizon, targets) for forecasting."""
        if self.kind == "series":
            results = self._forecast(inputs, None)
            targets = self.task.target_names
            return np.array([[[step[t] for t in targets] for step in r["forecast"]] for r in results])
        parts = []
        for _, out in self.outputs(inputs, on_error):
            parts.append(torch.softmax(out, dim=1).numpy() if self.task.name == "classification"
                         else self.task.unscale(out).numpy())
        width = len(self.classes) if self.task.name == "classification" else self.task.output_size()
        return np.concatenate(parts) if parts else np.zeros((0, width))


    def predict_to(
        self, inputs: Any, out: str | Path, top_k: int = 3, *, probabilities: bool = False, on_error: str = "raise",
    ) -> dict[str, Any]:
        """Predictions written to ``out`` as they are made, one row per input: ``.csv``,
        ``.parquet`` or ``.jsonl``. Columns: where the row came from (file, line, text, ...), the
        ``prediction`` and its ``probability`` (classification) or the value per target
        (regression), with ``probabilities`` one column per class, and with ``on_error="skip"``
        an ``error`` column (the refused inputs' rows say why). The file appears whole or not at
        all. Returns the path and the counts."""
        path = Path(out)
        writer = PredictionWriter.open(path, self, probabilities=probabilities, errors=on_error == "skip")
        rows = skipped = 0
        try:
            for names, outputs in self.outputs(inputs, on_error):
                probs = torch.softmax(outputs, dim=1) if self.task.name == "classification" else None
                for i, (name, result) in enumerate(zip(names, self.task.predict(outputs, top_k))):
                    writer.write(name, result, probs[i] if probs is not None else None)
                    rows += 1
                while skipped < len(self.skipped):  # the batch's refused inputs, in order after its answers
                    writer.write_error(self.skipped[skipped])
                    skipped += 1
        except BaseException:
            writer.abort()
            raise
        writer.close()
        return {"out": str(path), "rows": rows, "skipped": skipped}


SUFFIXES = (".csv", ".parquet", ".jsonl")


class PredictionWriter:
    """Rows of predictions streamed to a temporary file beside ``path``, renamed into place at the end."""

    def __init__(self, path: Path, columns: list[str], classes: list[str], probabilities: bool):
        self.path, self.columns, self.classes, self.probabilities = path, columns, classes, probabilities
        self.tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        self.suffix = path.suffix.lower()
        self.buffer: list[dict[str, Any]] = []
        self.parquet = None
        path.parent.mkdir(parents=True, exist_ok=True)
        self.file = None if self.suffix == ".parquet" else self.tmp.open("w", newline="", encoding="utf-8")
        if self.suffix == ".csv":
            import csv

            self.csv = csv.DictWriter(self.file, fieldnames=columns, extrasaction="ignore")
            self.csv.writeheader()

    @classmethod
    def open(cls, path: Path, predictor: Predictor, *, probabilities: bool, errors: bool) -> PredictionWriter:
        check_out_suffix(path)
        task = predictor.task
        columns = list(predictor.inputs.source_keys) + ["prediction"]
        if task.name == "classification":
            columns.append("probability")
            if probabilities:
                columns += [f"p_{c}" for c in predictor.classes]
        elif len(task.target_names) > 1:
            columns = columns[:-1] + list(task.target_names)
        if errors:
            columns.append("error")
        if path.suffix.lower() == ".parquet" and importlib.util.find_spec("pyarrow") is None:
            raise ConfigError(f"predict --out {path}: writing Parquet needs pyarrow. Fix: pip install "
                              "'deepworks[parquet]', or write .csv or .jsonl.")
        return cls(path, columns, predictor.classes, probabilities)

    def write(self, name: dict[str, Any], result: dict[str, Any], probs: torch.Tensor | None) -> None:
        row: dict[str, Any] = {**name}
        value = result["prediction"]
        if isinstance(value, dict):  # regression on several targets
            row.update(value)
        else:
            row["prediction"] = value
        if "top_k" in result:
            row["probability"] = result["top_k"][0]["probability"]
            if self.suffix == ".jsonl":
                row["top_k"] = result["top_k"]
        if self.probabilities and probs is not None:
            row.update({f"p_{c}": round(float(p), 6) for c, p in zip(self.classes, probs)})
        self._emit(row)

    def write_error(self, skipped: dict[str, Any]) -> None:
        self._emit(dict(skipped))

    def _emit(self, row: dict[str, Any]) -> None:
        if self.suffix == ".csv":
            self.csv.writerow(row)
        elif self.suffix == ".jsonl":
            import json

            self.file.write(json.dumps(row) + "\n")
        else:
            self.buffer.append({c: row.get(c) for c in self.columns})
            if len(self.buffer) >= 4096:
                self._flush_parquet()

    def _flush_parquet(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not self.buffer:
            return
        table = pa.Table.from_pylist(self.buffer)
        if self.parquet is None:
            self.parquet = pq.ParquetWriter(str(self.tmp), table.schema)
        self.parquet.write_table(table.cast(self.parquet.schema))
        self.buffer = []

    def close(self) -> None:
        if self.suffix == ".parquet":
            self._flush_parquet()
            if self.parquet is None:  # no row at all: an empty file with the columns
                import pyarrow as pa
                import pyarrow.parquet as pq

                pq.write_table(pa.table({c: pa.array([], pa.string()) for c in self.columns}), str(self.tmp))
            else:
                self.parquet.close()
        else:
            self.file.close()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        if self.file is not None:
            self.file.close()
        if self.parquet is not None:
            self.parquet.close()
        self.tmp.unlink(missing_ok=True)


def check_out_suffix(path: str | Path) -> None:
    """``--out`` must end in .csv, .parquet or .jsonl (checked before any work)."""
    if Path(path).suffix.lower() not in SUFFIXES:
        raise ConfigError(f"predict --out {path}: expected a file ending in {', '.join(SUFFIXES)}, got "
                          f"{Path(path).suffix or 'no suffix'}. Fix: e.g. --out predictions.csv.")


def predict(
    run_dir: str | Path, inputs: Sequence[str | Path] | Any = (), top_k: int = 3, out: str | Path | None = None, *,
    texts: Sequence[str] | None = None, on_error: str = "raise",
) -> list[dict[str, Any]]:
    """Predict with a run's best model (a :class:`Predictor` made for this one call): image files,
    folders or arrays (image runs), CSV/Parquet rows or DataFrames (table runs), texts, text files
    or DataFrames (text runs): the ``top_k`` classes and their probabilities for each
    (classification), or the predicted value in the target's units (regression).

    A text run takes raw strings as ``texts`` and files or DataFrames as ``inputs``: a CSV file's
    or a DataFrame's text column (the run's ``data.text``), or any other file's lines, one text per
    line. They are encoded with the run's tokenizer and vocabulary, or, for a run trained with
    ``data.encoder``, embedded by the same sentence encoder (its weights' SHA-256 checked against
    data.json).

    A forecasting run takes CSV files or DataFrames of history (the time column and the training
    columns) and returns, per history, the next ``horizon`` values with their time stamps, and
    draws the history with the forecast as a PNG: ``out`` (a ``.csv`` or ``.json`` file, one input
    only) gets the forecast and the PNG beside it; by default the PNG is ``runs/forecasts/<file
    stem>.png`` (``runs/forecasts/dataframe.png``) under the working directory."""
    items = [inputs] if isinstance(inputs, (str, Path)) or is_frame(inputs) else inputs
    given = items is not None and (len(items) if hasattr(items, "__len__") else 1)
    if not given and not texts:
        raise DataError("predict: give at least one input file (or, for a text run, texts).")
    p = Predictor(run_dir, device="cpu", progress=False)
    if texts:
        if p.inputs.json_key != "texts":
            raise DataError(f"predict: {run_dir} is not a text run (it reads {p.inputs.reads}); texts are for runs "
                            "trained on text. Fix: give input files instead.")
        if any(not isinstance(t, str) for t in texts):
            raise DataError("predict: texts must be strings, e.g. texts=['a fine film'].")
        # the texts first, then the files (a Path is always a file)
        items = list(texts) + [Path(i) if isinstance(i, str) else i for i in (items or [])]
    return p.predict(items, top_k, on_error, out=out)
