"""Looking inside a trained run: which input columns matter, what a layer has learned, and
what the training curves say went wrong.

``importance`` and ``projection`` open a run directory the way :func:`deepworks.evaluate` does (the run's config,
its data split again with the same seed, the best model) and write their results next to the
run's other files::

    deepworks.importance("runs/penguins-20261124-101500", split="val", keep_top=3)
    # -> importance.json, importance.png, config-top3.yaml
    deepworks.projection("runs/quickstart-20261124-101500", method="tsne")
    # -> projection-<layer>-tsne-val.png and .csv

``diagnose`` reads the run's files only (metrics.jsonl, summary.json, predictions.safetensors,
gradients.jsonl, data.json, config.yaml)::

    for finding in deepworks.diagnose("runs/quickstart-20261124-101500"):
        print(finding["kind"], finding["evidence"], finding["advice"])

The algorithms live in :mod:`deepworks.evaluation.importance`, :mod:`deepworks.evaluation.projection`
and :mod:`deepworks.evaluation.diagnosis`; this module ties them to a run.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deepworks.config import dump_config, load_config
from deepworks.data.loaders import TensorData
from deepworks.errors import CheckpointError, ConfigError, DataError
from deepworks.evaluation.diagnosis import diagnose_run
from deepworks.evaluation.importance import permutation_importance, plot_importance
from deepworks.evaluation.projection import (
    capture_activations,
    check_method,
    default_layer,
    find_layer,
    plot_projection,
    project_2d,
    subsample,
)
from deepworks.pipeline import PreparedData, Run, check_same_data, load_run, prepare_data
from deepworks.runs import RunDir, atomic_write
from deepworks.runtime import resolve_device
from deepworks.training import Trainer

__all__ = ["importance", "projection", "diagnose", "run_feature_groups"]

SPLITS = ("train", "val", "test")


def diagnose(run_dir: str | Path) -> list[dict[str, str]]:
    """What went wrong in a run, in plain words with the numbers: a list of ``{"kind",
    "evidence", "advice"}`` (see :mod:`deepworks.evaluation.diagnosis`), recomputed from the run
    directory's files; training stores the same list in ``summary.json`` as ``diagnosis``.
    A missing or cut-short ``metrics.jsonl`` gives a ``metrics_missing`` entry, not an error."""
    return diagnose_run(run_dir)


def _open(run_dir: str | Path, split: str) -> tuple[Run, RunDir, dict[str, Any]]:
    """The run (best model loaded) and its data.json, after checking ``split``."""
    if split not in SPLITS:
        raise ConfigError(f"--split: expected train, val or test, got {split!r}.")
    loaded = load_run(run_dir)
    run = RunDir(run_dir)
    return loaded, run, run.read_json(run.data)


def _data(loaded: Run, run: RunDir) -> PreparedData:
    """The run's splits again, as :func:`deepworks.evaluate` rebuilds them."""
    torch.manual_seed(loaded.config.seed)
    data = prepare_data(loaded.config)
    check_same_data(run, data)
    return data


def _evaluator(loaded: Run) -> Trainer:
    """A quiet Trainer for the run's model: its ``evaluate`` gives the run's report."""
    return Trainer(loaded.model, loaded.config.train.model_copy(update={"progress": "none"}), task=loaded.task)


def _scorer(trainer: Trainer, x: torch.Tensor, y: torch.Tensor) -> tuple[str, Callable[[torch.Tensor], float]]:
    """The metric and a score function of an input matrix against the split's targets, higher
    is better: the report's ``r2`` where it has one (regression runs), else its ``accuracy``."""
    metric = "r2" if "r2" in trainer.evaluate(TensorData(x, y)) else "accuracy"
    return metric, lambda m: float(trainer.evaluate(TensorData(m, y))[metric])


def run_feature_groups(info: dict[str, Any], where: str | Path = "data.json") -> dict[str, list[int]]:
    """Original input column -> encoded feature indices, from a run's data.json.

    A table run's ``input.groups`` (the slots of each column: its value or category code, a
    date's parts) when its model reads slots; else ``feature_groups`` (written by the table
    encoder: a one-hot block, a missing-indicator) when present; otherwise one group per entry of ``features`` (numeric-only tables, whose
    columns are the features). Image runs have neither and are refused with a pointer to
    ``deepworks projection``.
    """
    shape = info.get("input_shape") or []
    if len(shape) != 1:
        raise DataError(
            f"{where}: permutation importance is measured per input column of tabular runs, and this "
            f"run's inputs are {'series windows (steps, columns)' if len(shape) == 2 else 'images'} shaped "
            f"{tuple(shape)}. To see what its model learned, use "
            "`deepworks projection RUN_DIR` (activations of a layer in 2-D)."
        )
    width = int(shape[0])
    source = info.get("input") or {}
    # a table run whose model reads slots (one value per column, expanded inside the model): its slots' groups
    groups = source.get("groups") if source.get("form") == "slots" else info.get("feature_groups")
    if groups:
        if not isinstance(groups, dict) or not all(
            isinstance(v, list) and v and all(isinstance(i, int) and 0 <= i < width for i in v) for v in groups.values()
        ):
            raise CheckpointError(
                f"{where}: feature_groups must map each input column to a non-empty list of feature indices "
                f"in 0..{width - 1}; the file was edited or belongs to another version. Train the run again."
            )
        return {str(k): list(v) for k, v in groups.items()}
    features = info.get("features")
    if not features or len(features) != width:
        raise CheckpointError(
            f"{where}: expected a features list naming the run's {width} input column(s) (or feature_groups), "
            f"got {features!r}. Train the run again to record them."
        )
    return {str(name): [i] for i, name in enumerate(features)}


def _save_png(fig: Any, path: Path) -> None:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    atomic_write(path, buffer.getvalue())


def importance(
    run_dir: str | Path,
    *,
    split: str = "val",
    repeats: int = 5,
    seed: int = 0,
    keep_top: int | None = None,
) -> dict[str, Any]:
    """Permutation importance of each original input column of a tabular run.

    Each column (all the encoded features it became, together) is shuffled across the rows
    of ``split`` ``repeats`` times and the run's model is scored again; a column's importance
    is the mean drop of the score (accuracy for classification, R² for regression runs).
    Writes ``RUN_DIR/importance.json`` and ``RUN_DIR/importance.png`` (mean drop with std
    error bars). With ``keep_top=K`` it also writes ``RUN_DIR/config-top{K}.yaml``: the run's
    config with ``data.features`` set to the K most important columns (in the data's column
    order) and the name ``<name>-top{K}``, ready for ``deepworks train``.

    Returns the content of importance.json: ``metric``, ``baseline``, ``columns`` (one dict
    per column, most important first: ``column``, ``baseline``, ``mean_drop``, ``std_drop``,
    ``drops``) and ``files`` (paths written; ``config`` with ``keep_top``).

    >>> result = deepworks.importance("runs/penguins-20261124-101500", keep_top=2)  # doctest: +SKIP
    >>> [c["column"] for c in result["columns"]][:2], result["files"]["config"]    # doctest: +SKIP
    (['flipper_length', 'bill_length'], 'runs/penguins-20261124-101500/config-top2.yaml')
    """
    loaded, run, info = _open(run_dir, split)
    groups = run_feature_groups(info, run.data)
    if keep_top is not None and (isinstance(keep_top, bool) or not isinstance(keep_top, int) or not 1 <= keep_top <= len(groups)):
        raise ConfigError(
            f"--keep-top: expected a whole number from 1 to {len(groups)} (the run's input columns), got {keep_top!r}."
        )
    data = _data(loaded, run)
    part: TensorData = getattr(data, split)
    trainer = _evaluator(loaded)
    x, y = part.x.to(trainer.device), part.y.to(trainer.device)
    metric, score_fn = _scorer(trainer, x, y)
    rows = permutation_importance(score_fn, x, groups, repeats=repeats, seed=seed)

    files = {"json": str(run.path / "importance.json"), "png": str(run.path / "importance.png")}
    if keep_top is not None:
        top = {r["column"] for r in rows[:keep_top]}
        chosen = [name for name in groups if name in top]  # the data's column order
        name = f"{loaded.config.name[:56]}-top{keep_top}"
        config = load_config(loaded.config, {"data.features": chosen, "name": name})
        path = run.path / f"config-top{keep_top}.yaml"
        atomic_write(path, dump_config(config))
        files["config"] = str(path)
    result = {
        "run_dir": str(run.path),
        "split": split,
        "metric": metric,
        "baseline": rows[0]["baseline"],
        "samples": len(part),
        "repeats": repeats,
        "seed": seed,
        "columns": rows,
        "files": files,
    }
    fig = plot_importance(
        rows, metric=metric, title=f"{run.path.name}: permutation importance ({split}, {metric} {result['baseline']:.3f})"
    )
    _save_png(fig, run.path / "importance.png")
    run.write_json(run.path / "importance.json", result)
    return result


def _file_label(name: str) -> str:
    """A layer label safe in a file name (module names hold letters, digits, '.' and '_')."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)


def projection(
    run_dir: str | Path,
    *,
    layer: str | None = None,
    method: str = "pca",
    split: str = "val",
    max_points: int = 2000,
    seed: int = 0,
) -> dict[str, Any]:
    """The activations of one layer of a run's model on ``split``, projected to 2-D.

    By default the layer looked at is the input of the model's last leaf module with
    parameters (the final ``nn.Linear``: the penultimate features), labelled
    ``<name>.input``; ``layer`` names any module of ``model.named_modules()`` and its output
    is taken. Activations are flattened to (N, D) and projected with PCA (every sample) or
    t-SNE (at most ``max_points`` samples, stratified by class, or drawn at random for
    numeric targets; seeded by ``seed``).

    Writes ``RUN_DIR/projection-<layer>-<method>-<split>.png`` (coloured by class with a
    legend, or by target value with a colour bar for regression runs) and the same stem
    ``.csv`` with columns x, y, label (class name or target value). Returns where they went
    and what was projected (``layer``, ``captured``, ``points``, ``dims``).

    >>> deepworks.projection("runs/quickstart-20261124-101500", method="tsne")["png"]  # doctest: +SKIP
    'runs/quickstart-20261124-101500/projection-14.input-tsne-val.png'
    """
    check_method(method)
    if isinstance(max_points, bool) or not isinstance(max_points, int) or max_points < 3:
        raise ConfigError(f"--max-points: expected a whole number >= 3, got {max_points!r}.")
    loaded, run, _ = _open(run_dir, split)
    model = loaded.model
    if layer is None:
        name, captured = default_layer(model), "input"
        label = f"{name}.input"
    else:
        find_layer(model, layer)  # an unknown name fails before the data is loaded
        name, captured, label = layer, "output", layer
    data = _data(loaded, run)
    part: TensorData = getattr(data, split)
    regression = part.y.is_floating_point() or not loaded.classes
    y = part.y.cpu().numpy()
    values = y[:, 0] if y.ndim == 2 else y  # regression: colour by the (first) target
    idx = subsample(values, max_points, seed=seed, stratified=not regression) if method == "tsne" else np.arange(len(y))

    model.to(resolve_device(loaded.config.train.device))
    inputs = part.inputs(torch.from_numpy(idx))
    acts = capture_activations(
        model, inputs, name, capture=captured, batch_size=_evaluator(loaded).eval_batch_size(inputs[0].numel())
    )  # (n, D)
    coords = project_2d(acts.numpy(), method, seed=seed)  # (n, 2)
    shown = values[idx]

    stem = f"projection-{_file_label(label)}-{method}-{split}"
    png, table = run.path / f"{stem}.png", run.path / f"{stem}.csv"
    target = str(loaded.config.data.target or "target")
    title = (
        f"{run.path.name}: {captured} of layer {name!r} "
        f"({'t-SNE' if method == 'tsne' else 'PCA'}, {split} split, {len(idx)} samples)"
    )
    fig = plot_projection(coords, shown, classes=None if regression else loaded.classes, value_name=target, title=title)
    _save_png(fig, png)
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["x", "y", "label"])
    for (cx, cy), v in zip(coords, shown):
        writer.writerow([repr(float(cx)), repr(float(cy)), repr(float(v)) if regression else loaded.classes[int(v)]])
    atomic_write(table, text.getvalue())
    return {
        "run_dir": str(run.path),
        "split": split,
        "layer": name,
        "captured": captured,
        "label": label,
        "method": method,
        "points": int(len(idx)),
        "dims": int(acts.shape[1]),
        "png": str(png),
        "csv": str(table),
    }
