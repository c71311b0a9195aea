"""Tables: a CSV or Parquet file's rows, encoded by a :class:`TableEncoder` fitted on the training
rows (imputation, scaling, one-hot, ordinal codes, dates). A trained run reads CSV and Parquet
files (folders and glob patterns of them), pandas DataFrames, lists of row mappings, mappings of
columns and 2-D arrays (one column per input column, in the run's order), and the server's JSON
rows, always through that one encoder."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from deepworks.config import TABLE_SUFFIXES, Config
from deepworks.data.features import TableEncoder
from deepworks.data.leakage import apply_policy, find_duplicates, one_to_one_columns, sample_hashes
from deepworks.data.splits import apply_subset, normalize, split_indices
from deepworks.data.tabular import feature_matrix, frame_rows, load_table, read_table, table_target
from deepworks.errors import ConfigError, DataError
from deepworks.kinds.common import (
    Batch, PreparedData, RunInputs, apply_fold, check_on_error, class_counts, data_seed, expand_paths, fingerprint,
    subset_record, tensor_splits,
)
from deepworks.train.tasks import Classification, Regression, Task


def prepare(config: Config, fold: tuple[int, int | None] | None = None) -> PreparedData:
    """A table: raw cells -> split -> encoder fitted on the training rows -> (N, F) features.

    Classification targets are class indices; regression targets are standardised with the
    training split's mean and std (the task un-scales predictions).
    """
    d = config.data
    table = load_table(d.path, d.target, features=d.features, group_by=d.group_by)
    y, classes, task_name = table_target(table, d.task)
    where = str(table.path)
    if d.subset is not None and task_name == "regression":
        raise ConfigError(
            f"data.subset: {where} has a numeric target {table.target_name!r} (a regression run), but a subset keeps "
            "classes and samples per class. Fix: remove data.subset, or set data.task: classification."
        )
    groups = np.asarray(table.groups) if table.groups else None
    seed = data_seed(config)
    idx = split_indices(
        y, stratify=task_name == "classification", groups=groups,
        val_fraction=d.val_fraction, test_fraction=d.test_fraction, seed=seed, what=where,
    )
    if fold is not None:
        idx.update(apply_fold(idx, y, fold, task_name == "classification", groups, seed, where))
    if d.subset is not None:
        idx, classes, remap = apply_subset(idx, y, d.subset, classes, where=where)
        y = remap[y]  # the kept classes' labels 0..k-1; the rows left out are indexed no more
    # exact duplicate rows (the parsed input cells) within and across splits
    keyed = np.array(["\x1f".join(cells) for cells in zip(*table.columns.values())]).reshape(-1, 1)
    duplicates = find_duplicates(sample_hashes(keyed), idx)
    idx = apply_policy(duplicates, idx, d.on_duplicates, what=where)
    giveaway = one_to_one_columns(
        {name: np.asarray(cells, dtype=object)[idx["train"]] for name, cells in table.columns.items()}, y[idx["train"]]
    )
    if giveaway:
        raise DataError(
            f"{where}: column(s) {', '.join(map(repr, giveaway))} determine the target {table.target_name!r} one to one "
            "on the training split (the target under another name or coding?), so the figures would be meaningless. "
            f"Fix: leave them out with data.features, or declare them data.columns.<name>.kind: ignore."
        )
    declared = {name: col.model_dump(exclude_none=True) for name, col in d.columns.items()}
    unknown = [name for name in declared if name not in table.columns]
    if unknown:
        raise DataError(
            f"{where}: data.columns names column(s) {', '.join(map(repr, unknown))} that are not input columns. "
            f"Input columns: {', '.join(map(repr, table.columns))}."
        )
    encoder = TableEncoder.fit(table.rows(idx["train"]), declared, scaling=d.scaling,
                               lines=[table.lines[i] for i in idx["train"]], where=where)
    xs = {
        name: torch.from_numpy(encoder.transform(table.rows(rows), lines=[table.lines[i] for i in rows], where=where))
        for name, rows in idx.items()
    }
    if task_name == "regression":
        mean, std = float(y[idx["train"]].mean()), float(y[idx["train"]].std())
        std = std if std > 0 else 1.0
        task: Task = Regression([table.target_name], [mean], [std])
        ys = {name: torch.from_numpy(((y[rows] - mean) / std).astype(np.float32))[:, None] for name, rows in idx.items()}
    else:
        task = Classification(classes)
        ys = {name: torch.from_numpy(y[rows].astype(np.int64)) for name, rows in idx.items()}
    info = {
        "dataset": "table",
        "source": str(table.path.resolve()),
        "kind": "table",
        "target": table.target_name,
        "classes": classes,
        "input_shape": [len(encoder.feature_names)],
        "features": encoder.inputs,
        "feature_names": encoder.feature_names,
        "feature_groups": encoder.groups,
        "encoder": encoder.to_dict(),
        "sizes": {name: len(rows) for name, rows in idx.items()},
        "class_counts": class_counts(ys, len(classes)) if task_name == "classification" else None,
        "official_test": False,
        "split_fingerprint": fingerprint(idx, lambda name: np.ascontiguousarray(y[idx[name]]).tobytes()),
        "task": task.record(),
        "duplicates": duplicates.to_dict(d.on_duplicates),
        **subset_record(config, classes),
    }
    return PreparedData(*tensor_splits(xs, ys), classes, (len(encoder.feature_names),), info, task)


class TableInputs(RunInputs):
    """A table run's inputs: raw cells -> the run's encoder -> float32 (N, F). Runs from before
    the encoder read their numeric ``features`` and standardise them with data.json's mean/std."""

    kind = "table"
    reads = "table rows"
    json_key = "rows"
    source_keys = ("file", "line", "row")

    def __init__(self, run_dir: Path, info: dict[str, Any]):
        super().__init__(run_dir, info)
        self.encoder = TableEncoder.from_dict(info["encoder"]) if "encoder" in info else None
        self.columns = list(self.encoder.inputs) if self.encoder is not None else list(info["features"])

    # -- raw inputs -> (where, cells by column, line numbers) --
    def _tables(self, inputs: Any) -> Iterator[tuple[str, dict[str, list[str]], list[int], dict[str, Any]]]:
        if isinstance(inputs, (str, Path, np.ndarray, Mapping)) or _is_frame(inputs):
            inputs = [inputs]
        elif isinstance(inputs, list) and inputs and all(isinstance(r, Mapping) for r in inputs):
            inputs = [inputs]  # one list of row mappings
        for item in inputs:
            if isinstance(item, (str, Path)):
                for name in expand_paths([item], TABLE_SUFFIXES, "CSV or Parquet files"):
                    path = Path(name)
                    if not path.is_file():
                        raise DataError(f"{path}: no such file. Fix: give a CSV (or Parquet) file with the columns "
                                        f"{', '.join(map(repr, self.columns))}.")
                    if path.suffix.lower() not in TABLE_SUFFIXES:
                        raise DataError(f"{path}: this run reads table rows from .csv or .parquet files, not "
                                        f"{path.suffix or 'files without a suffix'}. Fix: save the rows as CSV.")
                    header, rows, lines = read_table(path)
                    yield str(path), _by_column(header, rows), lines, {"file": str(path)}
            elif _is_frame(item):
                header, rows = frame_rows(item)
                yield "DataFrame", _by_column(header, rows), list(range(1, len(rows) + 1)), {}
            elif isinstance(item, np.ndarray):
                if item.ndim != 2 or item.shape[1] != len(self.columns):
                    raise DataError(
                        f"predict: an array of shape {item.shape} is not rows of this table; expected (N, "
                        f"{len(self.columns)}): one column per input column, in the order {', '.join(self.columns)}. "
                        "Fix: pass a pandas DataFrame (columns by name) or an array in that order.")
                cells = {name: [_cell(v) for v in item[:, j]] for j, name in enumerate(self.columns)}
                yield "array", cells, list(range(1, len(item) + 1)), {}
            elif isinstance(item, Mapping):  # columns: name -> values
                cells = {str(k): [_cell(v) for v in vs] for k, vs in item.items()}
                n = len(next(iter(cells.values()))) if cells else 0
                yield "columns", cells, list(range(1, n + 1)), {}
            elif isinstance(item, list):
                yield "rows", self._row_cells(item, "rows"), list(range(1, len(item) + 1)), {}
            else:
                raise DataError(f"predict: a table run takes CSV or Parquet files, DataFrames, lists of rows (mappings "
                                f"of column -> value) or 2-D arrays; got {type(item).__name__}.")

    def _row_cells(self, rows: list[Any], where: str) -> dict[str, list[str]]:
        if any(not isinstance(r, Mapping) for r in rows):
            raise DataError(f"{where}: rows must be mappings of column -> value, e.g. {self.json_example()}.")
        missing = sorted({n for r in rows for n in self.columns if n not in r})
        if missing:
            raise DataError(f"{where}: rows lack the column(s) {', '.join(map(repr, missing))} the model was trained "
                            f"on. Fix: give every row {', '.join(map(repr, self.columns))}.")
        return {n: [_cell(r[n]) for r in rows] for n in self.columns}

    def encode(self, cells: dict[str, list[str]], lines: list[int], where: str) -> torch.Tensor:
        """Cells by column -> float32 (N, F), as the model was trained on."""
        if self.encoder is not None:
            return torch.from_numpy(self.encoder.transform(cells, lines=lines, where=where))
        absent = [c for c in self.columns if c not in cells]
        if absent:
            raise DataError(f"{where}: the model was trained on column(s) {', '.join(map(repr, absent))}, which are "
                            f"missing here. Fix: give every row the columns {', '.join(map(repr, self.columns))}.")
        return torch.from_numpy(feature_matrix(cells, self.columns, lines, where))

    def batches(self, inputs: Any, batch_size: int, on_error: str = "raise", workers: int = 0) -> Iterator[Batch]:
        check_on_error(on_error)
        for where, cells, lines, origin in self._tables(inputs):
            key = "line" if origin.get("file") and not where.endswith((".parquet", ".pq")) else "row"
            for start in range(0, len(lines), batch_size):
                part = {name: values[start:start + batch_size] for name, values in cells.items()}
                rows = lines[start:start + batch_size]
                names = [{**origin, key: line} for line in rows]
                try:
                    yield Batch(self.encode(part, rows, where), names)
                except DataError:
                    if on_error == "raise":
                        raise
                    yield self._row_by_row(part, rows, names, where)

    def _row_by_row(self, cells: dict[str, list[str]], lines: list[int], names: list[dict[str, Any]], where: str) -> Batch:
        """A batch with a bad row: each row alone, so the good ones are answered and the bad named."""
        batch, xs = Batch(None, []), []
        for i, name in enumerate(names):
            try:
                xs.append(self.encode({k: v[i:i + 1] for k, v in cells.items()}, lines[i:i + 1], where))
            except DataError as exc:
                batch.errors.append((name, str(exc)))
                continue
            batch.names.append(name)
        batch.x = torch.cat(xs) if xs else None
        return batch

    def to_model(self, x: torch.Tensor) -> torch.Tensor:
        if "mean" in self.info:  # a run from before the encoder: standardised features
            return normalize(x, self.info["mean"], self.info["std"])
        return x

    # -- the server --
    def from_json(self, items: list[Any]) -> torch.Tensor:
        cells = self._row_cells(items, "rows")
        return self.encode(cells, list(range(1, len(items) + 1)), "rows")

    def json_example(self) -> str:
        import json

        return json.dumps({"rows": [{c: "..." for c in self.columns[:3]}]})

    # -- ONNX --
    def onnx_feed(self, x: torch.Tensor) -> np.ndarray:
        return self.to_model(x).cpu().numpy()

    def export_graph(self, model: nn.Module, cfg: Config) -> tuple[str, nn.Module, str, dict[str, Any]]:
        info = self.info
        if self.encoder is None:
            raise DataError(
                f"export: {self.run_dir} is a table run from before the table encoder; its data.json has no encoder to "
                "ship with the graph. Fix: train the run again with this deepworks.")
        return "table", model, "features", {
            "meaning": f"the {len(info['feature_names'])} encoded features of a table row (feature_names)",
            "preprocessing": {
                "how": "TableEncoder.from_dict(preprocessing['encoder']).transform({column: cells}) "
                       "(deepworks.data.features): per input column, impute missing cells with the training value, "
                       "scale numbers, one-hot categories (plus an 'other' slot), add missing indicators",
                "columns": info.get("features"), "feature_names": info["feature_names"],
                "feature_groups": info.get("feature_groups"), "encoder": info["encoder"],
            },
        }


def _by_column(header: list[str], rows: list[list[str]]) -> dict[str, list[str]]:
    return {name: [row[i] for row in rows] for i, name in enumerate(header)}


def _cell(value: Any) -> str:
    """An in-memory value as the text cell a CSV file would hold (None and NaN: missing)."""
    if value is None:
        return ""
    if isinstance(value, float) and value != value:
        return ""
    if isinstance(value, (np.floating, np.integer)):
        value = value.item()
        if isinstance(value, float) and value != value:
            return ""
    return str(value)


def _is_frame(value: Any) -> bool:
    return type(value).__name__ == "DataFrame" and hasattr(value, "columns")
