"""A run's best model as ONNX, checked against PyTorch before it is kept.

What the graph takes (its one input, batch axis dynamic, everything float32 except token ids):

=============== ============================ ==================================================
run             input                        what produces it (``<out>.json`` -> preprocessing)
=============== ============================ ==================================================
images          ``pixels`` (N, C, H, W)      the file decoded as training did (``image``: channels,
                float32 in [0, 1]            size, ...), the stored integers times ``scale``
                                             (1/255 for 8-bit images); the run's normalisation
                                             (training mean/std), a backbone's resize and affine,
                                             and ``train.tta: hflip`` are inside the graph
tables          ``columns`` (N, S)           the run's ``TableEncoder.encode`` (its JSON is in the
                float32, NaN where missing   sidecar): a scaled number or a category's code per
                                             slot; imputation, one-hot and missing indicators
                                             are inside the graph (runs from before the slots:
                                             ``features`` (N, F), ``transform``)
texts           ``token_ids`` (N, L) int64   the run's tokenizer and vocabulary (the sidecar's
                                             ``text``), right-padded with 0 to L = max_length
texts, a        ``token_ids`` (N, L) int64   the encoder's tokenizer saved in the run
pretrained                                   (``tokenizer/``), cut at max_length, right-padded
transformer                                  to the batch's longest text (L varies up to
                                             max_length); the attention mask is in the graph
sentence        ``embeddings`` (N, D)        the sentence encoder named in the sidecar (weights'
embeddings                                   SHA-256, feature kind); the graph is the head
series          ``windows`` (N, T, C)        the last T steps of the columns, standardised with
                                             the training period's mean/std (the sidecar's
                                             ``input``)
=============== ============================ ==================================================

The output is ``logits`` (classification: softmax gives the probabilities of ``classes``) or
``prediction`` (regression and forecasting: standardised; value = output * std + mean per
target, forecasts step-major).

Exporters: ``torch.onnx.export(dynamo=True)`` first, then the TorchScript exporter
(``dynamo=False``) when the first fails or misses parity (the sequence models pack their
token ids, which only the TorchScript exporter turns into ONNX's ``sequence_lens``). Each
candidate is written to a temporary file, run by ONNX Runtime (CPUExecutionProvider) on real
samples of the run's validation split (the test split when there is none) at batch sizes 1 and
7 (and, for token and subword ids, one batch mixing the shortest and longest texts and an empty one), and
compared with the run's PyTorch model in fp32 on the pipeline's own inputs. The largest
absolute difference must be at most :data:`TOLERANCE`; otherwise the file is left as
``<out>.failed`` and :class:`ExportError` is raised. GAN runs are not exported.

A run trained on data given in Python (``deepworks.train(source=...)``) keeps no copy of its
data, so its parity samples come from the same data given again:
``deepworks.export(run, source=...)``, checked against the run's ``data.fingerprint`` as
``deepworks.evaluate`` checks it; the parity check is the same as for a run trained on files.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import platform
import re
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from deepworks.errors import ConfigError, DataError, DeepworksError
from deepworks.kinds.image import PixelInput  # noqa: F401  (re-exported: the graph's wrapper of image runs)
from deepworks.models.external import run_config
from deepworks.models.gan import is_adversarial
from deepworks.runs import existing_run
from deepworks.version import __version__
from deepworks.training.step import with_tta
from deepworks.transfer import Transfer

__all__ = ["export", "ExportError", "TOLERANCE", "DEFAULT_OPSET", "FORMAT_VERSION"]

FORMAT_VERSION = 1  # of the sidecar JSON
TOLERANCE = 1e-4  # largest absolute difference between ONNX Runtime's and PyTorch's outputs (float32)
DEFAULT_OPSET = 18  # the dynamo exporter's lowest; the TorchScript exporter takes it too
PARITY_BATCHES = (1, 7)
FORMATS = ("onnx",)


class ExportError(DeepworksError):
    """The exported model does not compute what the run's model computes (or cannot be exported)."""


def _require_runtime() -> tuple[Any, Any]:
    try:
        import onnx
        import onnxruntime
    except ImportError as exc:
        raise ConfigError(
            f"export --format onnx needs the onnx and onnxruntime packages ({exc.name} is not installed). "
            "Fix: pip install 'deepworks[export]'."
        ) from None
    return onnx, onnxruntime


def export(
    run_dir: str | Path, format: str = "onnx", out: str | Path | None = None, opset: int | None = None,
    *, source: Any = None,
) -> dict[str, Any]:
    """Export the best model of ``run_dir`` (fp32, CPU, eval mode) to ``out`` (default
    ``<run_dir>/model.onnx``) with a sidecar ``<out>.json``; check ONNX Runtime against PyTorch
    on validation samples (batch sizes 1 and 7) and raise :class:`ExportError` when the largest
    absolute difference exceeds :data:`TOLERANCE`. Returns the sidecar's content, which is also
    stored in ``summary.json`` (``export``, in short). A run trained on data given in Python is
    given the same data again (``source``, checked against the run's fingerprint): its validation
    samples are the parity check's inputs."""
    from deepworks.data.memory import given_again
    from deepworks.kinds import inputs_for_run, prepare_data
    from deepworks.predictor import load_run

    if format not in FORMATS:
        raise ConfigError(f"export --format: expected one of {', '.join(FORMATS)}, got {format!r}. Fix: --format onnx.")
    if opset is not None and not 9 <= int(opset) <= 23:
        raise ConfigError(f"export --opset: expected an ONNX opset between 9 and 23, got {opset}. "
                          f"Fix: leave it out (default {DEFAULT_OPSET}).")
    opset = int(opset) if opset is not None else DEFAULT_OPSET
    onnx, ort = _require_runtime()
    run = existing_run(run_dir)
    cfg = run_config(run.path)
    if is_adversarial(cfg.model.name):
        raise ConfigError(
            f"{run.path}: a GAN run ({cfg.model.name}) is not exported: export writes classifiers and regressors "
            "(images, tables, texts, sentence embeddings, series). Fix: `deepworks generate "
            f"{run.path} --n 16 --out DIR` for its images."
        )
    loaded = load_run(run.path)
    info = run.read_json(run.data)
    model = loaded.model.to("cpu").float().eval()
    if isinstance(model, Transfer) and model.reads_features:
        raise ExportError(f"{run.path}: the model is set to read cached features (transfer.cache); export needs the "
                          "whole network. Fix: export the run as loaded by deepworks.load_run.")
    torch.manual_seed(loaded.config.seed)
    with given_again(loaded.config, source, str(run.path), "export"):
        data = prepare_data(loaded.config)
    split_name = next((s for s in ("val", "test", "train") if len(getattr(data, s))), None)
    if split_name is None:
        raise ExportError(f"{run.path}: the run's data has no samples to check the exported model on.")
    split = getattr(data, split_name)
    inputs = inputs_for_run(run.path, info)
    try:
        kind, graph, in_name, spec = inputs.export_graph(model, loaded.config)
    except DataError as exc:  # a run from an older deepworks whose record cannot say what the input means
        raise ExportError(str(exc)) from None
    out_name = "logits" if loaded.task.name == "classification" else "prediction"
    reference = with_tta(model, loaded.config.train.tta)  # as predict runs it (train.tta flips images only)
    cases = _parity_cases(split, inputs, reference)
    # the batch axis, and (texts padded to each batch's longest) the length axis up to the run's input size
    axes = {axis: (name, 1 << 20 if axis == 0 else int(inputs.shape[axis - 1]))
            for axis, name in inputs.dynamic_axes.items()}

    out_path = Path(out) if out is not None else run.path / "model.onnx"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f"{out_path.name}.tmp-{os.getpid()}")
    failed = out_path.with_name(out_path.name + ".failed")
    tried: dict[str, str] = {}
    best: tuple[float, str, dict[str, float]] | None = None
    started = time.perf_counter()
    try:
        for exporter in (("dynamo", "torchscript") if opset >= 18 else ("torchscript",)):
            try:
                _write_graph(graph, cases[-1][1], tmp, in_name, out_name, opset, exporter, axes)
            except Exception as exc:  # an exporter's failure is a reason to try the next one
                tried[exporter] = _first_line(exc)
                continue
            diffs = _parity(ort, tmp, in_name, cases)
            worst = max(diffs.values())
            if best is None or worst < best[0]:
                best = (worst, exporter, diffs)
                if worst > TOLERANCE:
                    os.replace(tmp, failed)
            if worst <= TOLERANCE:
                break
            tried[exporter] = f"max abs diff {worst:.3g} > {TOLERANCE:g}"
        if best is None:
            raise ExportError(
                f"{run.path}: the model ({cfg.model.name}) could not be exported to ONNX opset {opset}: "
                + "; ".join(f"{k}: {v}" for k, v in tried.items())
                + ". Fix: try another --opset (18 to 20), or report the model family as not exportable."
            )
        worst, exporter, diffs = best
        if worst > TOLERANCE:
            raise ExportError(
                f"{run.path}: ONNX Runtime's outputs differ from PyTorch's by up to {worst:.3g} on {split_name} samples "
                f"(allowed {TOLERANCE:g}; per batch: {', '.join(f'{k} {v:.3g}' for k, v in diffs.items())}), so the "
                f"file is not kept as {out_path.name}; it is left as {failed} for inspection. "
                "Fix: try another --opset, or report the model family as not exportable."
            )
        os.replace(tmp, out_path)
    finally:
        if tmp.exists():
            tmp.unlink()
    failed.unlink(missing_ok=True)  # a failed file from an earlier attempt is stale now
    sha = hashlib.sha256(out_path.read_bytes()).hexdigest()
    versions = {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": ort.__version__,
                "python": platform.python_version()}
    versions["deepworks"] = __version__
    shape = [inputs.dynamic_axes.get(axis + 1, int(v)) for axis, v in enumerate(cases[0][1].shape[1:])]
    sidecar = {
        "format_version": FORMAT_VERSION,
        "format": "onnx",
        "file": out_path.name,
        "sha256": sha,
        "run": str(run.path),
        "model": cfg.model.name,
        "task": loaded.task.record(),
        "classes": loaded.classes,
        "input": {"name": in_name, "kind": kind, "shape": ["batch", *shape],
                  "dtype": str(cases[0][1].dtype).removeprefix("torch."), "meaning": spec["meaning"]},
        "output": _output_record(loaded.task, out_name),
        "preprocessing": spec["preprocessing"],
        "parity": {"max_abs_diff": worst, "tolerance": TOLERANCE, "batches": diffs, "split": split_name,
                   "reference": "the run's PyTorch model in float32 on the CPU, on the pipeline's own inputs",
                   "runtime": "onnxruntime CPUExecutionProvider"},
        "exporter": exporter,
        "exporters_tried": tried,
        "opset": opset,
        "seconds": round(time.perf_counter() - started, 2),
        "versions": versions,
    }
    sidecar_path = out_path.with_name(out_path.name + ".json")
    run.write_json(sidecar_path, sidecar)
    summary = run.read_json(run.summary) if run.summary.exists() else {}
    summary["export"] = {"format": "onnx", "path": str(out_path), "sidecar": str(sidecar_path), "sha256": sha,
                         "max_abs_diff": worst, "tolerance": TOLERANCE, "batches": diffs, "exporter": exporter,
                         "opset": opset}
    run.write_json(run.summary, summary)
    return {**sidecar, "path": str(out_path), "sidecar": str(sidecar_path)}


def _first_line(exc: BaseException) -> str:
    """The root cause of an exporter's failure, one line without terminal colours."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300] if text else ''}"


@contextlib.contextmanager
def _quiet_native_stderr():
    """The TorchScript exporter's C++ passes print shape-inference notes straight to file
    descriptor 2 (not Python warnings); they say nothing to the user, whose check is parity."""
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # a captured stream without a descriptor
        yield
        return
    sys.stderr.flush()
    saved = os.dup(fd)
    try:
        with open(os.devnull, "w") as sink:
            os.dup2(sink.fileno(), fd)
            yield
    finally:
        os.dup2(saved, fd)
        os.close(saved)


def _output_record(task: Any, name: str) -> dict[str, Any]:
    record = task.record()
    if task.name == "classification":
        return {"name": name, "shape": ["batch", len(record["classes"])],
                "meaning": "logits over classes (in order); softmax gives the probabilities"}
    targets = record["targets"]
    size = len(targets) * int(record.get("horizon", 1))
    return {"name": name, "shape": ["batch", size],
            "meaning": "standardised predictions: value = output * std + mean of its target "
                       + ("(step-major: horizon steps of the targets)" if "horizon" in record else ""),
            "targets": targets, "mean": record["mean"], "std": record["std"]}


def _rows(n: int, available: int) -> torch.Tensor:
    return torch.arange(n) % available


def _parity_cases(split: Any, inputs: Any, reference: nn.Module) -> list[tuple[str, torch.Tensor, np.ndarray]]:
    """[(label, graph input, PyTorch's output)]: real samples of the split at batch sizes 1 and 7
    (repeated when the split is smaller), and the kind's extra cases (token ids: a batch mixing the
    shortest and longest texts with an empty one). PyTorch's output is the run's model in fp32 on
    the pipeline's own input (for images: the stored integers through the run's ``ToInput``)."""
    n = len(split)
    pairs = []
    for b in PARITY_BATCHES:
        pairs.append((str(b), *inputs.parity_inputs(split, _rows(b, n))))
    pairs += [(label, x, x) for label, x in inputs.parity_extra(split)]
    with torch.no_grad():
        return [(label, graph_in, reference(torch_in).float().numpy()) for label, graph_in, torch_in in pairs]


def _write_graph(
    graph: nn.Module, example: torch.Tensor, path: Path, in_name: str, out_name: str, opset: int, exporter: str,
    axes: dict[int, tuple[str, int]] | None = None,
) -> None:
    """One exporter's ONNX file of ``graph`` at ``path`` (weights inside). ``axes``: the input's
    dynamic axes, ``{axis: (name, largest size)}``; default the batch axis alone."""
    axes = axes or {0: ("batch", 1 << 20)}
    path.unlink(missing_ok=True)
    quiet = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(quiet):
        warnings.simplefilter("ignore")
        if exporter == "dynamo":
            torch.onnx.export(
                graph, (example,), str(path), input_names=[in_name], output_names=[out_name], opset_version=opset,
                dynamo=True, external_data=False, verbose=False,
                dynamic_shapes=({axis: torch.export.Dim(name, min=1, max=top) for axis, (name, top) in axes.items()},),
            )
        else:
            with _quiet_native_stderr():
                torch.onnx.export(
                    graph, (example,), str(path), input_names=[in_name], output_names=[out_name],
                    opset_version=opset, dynamo=False,
                    dynamic_axes={in_name: {axis: name for axis, (name, _) in axes.items()}, out_name: {0: "batch"}},
                )
    if not path.exists():
        raise ExportError(f"the {exporter} exporter wrote no file")


def _parity(ort: Any, path: Path, in_name: str, cases: list[tuple[str, torch.Tensor, np.ndarray]]) -> dict[str, float]:
    """Largest absolute difference between ONNX Runtime's output on the graph's input and
    PyTorch's, per case."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    diffs = {}
    for label, graph_in, want in cases:
        got = session.run(None, {in_name: graph_in.numpy()})[0]
        diffs[label] = float(np.abs(got.astype(np.float64) - want.astype(np.float64)).max())
    return diffs
