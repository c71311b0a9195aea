"""Tables: a CSV, TSV, Parquet or JSON Lines file's rows (or a pandas DataFrame's), encoded by a
:class:`TableEncoder` fitted on the training rows into slots: per input column a scaled number or
a category's code (NaN where missing). The run's model starts with :class:`TableInput`, which
expands slots into features per batch on the device (imputation, one-hot, missing indicators),
so the table is never held as a dense one-hot matrix, and the exported graph takes the same
slots. A trained run reads table files (folders and glob patterns of them), pandas DataFrames,
lists of row mappings, mappings of columns and 2-D arrays (one column per input column, in the
run's order), and the server's JSON rows, always through that one encoder."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from deepworks.config import TABLE_SUFFIXES, Config
from deepworks.data.features import ColumnValues, TableEncoder
from deepworks.data.leakage import apply_policy, find_duplicates, one_to_one_columns
from deepworks.data.memory import given_frame
from deepworks.data.splits import apply_subset, normalize, split_indices
from deepworks.data.tabular import Lines, Table, feature_matrix, is_frame, load_table, read_frame, table_target
from deepworks.errors import ConfigError, DataError
from deepworks.kinds.common import (
    Batch, PreparedData, RunInputs, apply_fold, check_on_error, class_counts, data_seed, expand_paths, fingerprint,
    subset_record, tensor_splits,
)
from deepworks.training.tasks import Classification, Regression, Task


def prepare(config: Config, fold: tuple[int, int | None] | None = None, source: Any = None) -> PreparedData:
    """A table: typed columns -> split -> encoder fitted on the training rows -> slots (N, S),
    float32: a scaled number or a category's code per input column (NaN where missing). The
    run's model expands them per batch (:class:`TableInput`: imputation, one-hot, missing
    indicators), so a table is held as S floats per row, never as its one-hot features.

    Classification targets are class indices; regression targets are standardised with the
    training split's mean and std (the task un-scales predictions). ``source`` (a pandas
    DataFrame, or a path) is read in place of ``data.path``.
    """
    d = config.data
    if source is None:  # a DataFrame given in Python (deepworks.train(source=...)), if one was
        source = given_frame(d)
    # source: a pandas DataFrame (or a path) read in place of data.path
    table = load_table(d.path if source is None else source, d.target, features=d.features, group_by=d.group_by,
                       delimiter=getattr(d, "delimiter", None))
    return prepare_table(config, table, fold)


def prepare_table(config: Config, table: Table, fold: tuple[int, int | None] | None = None) -> PreparedData:
    """:func:`prepare` for a table already read (:func:`deepworks.data.tabular.load_table`, which
    also takes a pandas DataFrame)."""
    d = config.data
    y, classes, task_name = table_target(table, d.task)
    where = table.where
    if d.subset is not None and task_name == "regression":
        raise ConfigError(
            f"data.subset: {where} has a numeric target {table.target_name!r} (a regression run), but a subset keeps "
            "classes and samples per class. Fix: remove data.subset, or set data.task: classification."
        )
    groups = table.groups
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
    # exact duplicate rows (the input columns' values) within and across splits
    duplicates = find_duplicates(row_hashes(table.columns), idx)
    idx = apply_policy(duplicates, idx, d.on_duplicates, what=where)
    split_fingerprint = fingerprint(idx, lambda name: np.ascontiguousarray(y[idx[name]]).tobytes())
    # each split's rows in file order from here: gathering a column's rows then reads memory in order
    # (the training batches are drawn in a seeded random order all the same)
    idx = {name: np.sort(rows) for name, rows in idx.items()}
    train_rows = idx["train"]
    train = table.rows(train_rows)
    giveaway = _giveaway(train, y[train_rows])
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
    encoder = TableEncoder.fit(train, declared, scaling=d.scaling, lines=table.lines.take(train_rows), where=where)
    del train
    slots = encoder.encode_rows(table.columns, idx, lines=table.lines, where=where)
    xs = {name: torch.from_numpy(slots.pop(name)) for name in list(slots)}
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
        "source": str(table.path.resolve()) if table.where != "DataFrame" else "DataFrame",
        "kind": "table",
        "target": table.target_name,
        "classes": classes,
        "input_shape": [len(encoder.input_names)],
        "features": encoder.inputs,
        "feature_names": encoder.feature_names,
        "feature_groups": encoder.groups,
        "encoder": encoder.to_dict(),
        # the model's input: one slot per value (TableEncoder.encode), expanded inside the model
        "input": {"form": SLOTS, "names": encoder.input_names, "groups": encoder.input_groups},
        "sizes": {name: len(rows) for name, rows in idx.items()},
        "class_counts": class_counts(ys, len(classes)) if task_name == "classification" else None,
        "official_test": False,
        "split_fingerprint": split_fingerprint,
        "task": task.record(),
        "duplicates": duplicates.to_dict(d.on_duplicates),
        **({"delimiter": d.delimiter} if getattr(d, "delimiter", None) else {}),
        **subset_record(config, classes),
    }
    return PreparedData(*tensor_splits(xs, ys), classes, (len(encoder.input_names),), info, task)


def row_hashes(columns: Mapping[str, ColumnValues]) -> np.ndarray:
    """A 64-bit hash of each row's values (N,) uint64, column by column on arrays: equal rows hash
    equal; two different rows collide with a chance of about N^2 / 2^65 (1e-7 for 2 million rows)."""
    n = len(next(iter(columns.values()))) if columns else 0
    h = np.zeros(n, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for values in columns.values():
            if values.is_numbers:
                numbers = values.numeric() + 0.0  # -0.0 and 0.0 are one value; NaN's bits are one NaN's
                numbers[np.isnan(numbers)] = np.nan
                h ^= numbers.view(np.uint64)
            else:
                h ^= values.codes()[0].view(np.uint64)
            # multiply and fold the high half down (in place): each column moves every bit of the hash
            h *= np.uint64(0x9E3779B97F4A7C15)
            h ^= h >> np.uint64(29)
    return h


def _giveaway(columns: Mapping[str, ColumnValues], target: np.ndarray) -> list[str]:
    """:func:`one_to_one_columns` on the training rows, asked only of the columns that could
    match: one with more distinct values than the target has cannot (most numeric columns)."""
    n_targets = len(np.unique(target))
    candidates = {}
    for name, part in columns.items():
        if part.is_numbers:
            numbers = part.numeric()
            present = numbers[~np.isnan(numbers)]
            if len(np.unique(present[:4096])) > n_targets:
                continue
            candidates[name] = numbers
        else:
            codes, _ = part.codes()
            present = codes[codes >= 0]
            if len(present) == 0 or int((np.bincount(present) > 0).sum()) != n_targets:
                continue
            candidates[name] = np.where(codes >= 0, codes, np.nan)
    return one_to_one_columns(candidates, target) if candidates else []


SLOTS = "slots"  # data.json input.form of runs whose model takes TableEncoder.encode's slots


class TableInput(nn.Module):
    """Slots (B, S) -> features (B, F), in front of a table run's network (and in its exported
    graph): a missing slot (NaN) takes its training fill, a category's code becomes its one-hot
    block, a column with missing training cells gets its missing indicator. What
    :meth:`TableEncoder.expand` computes, a batch at a time on the batch's device; a code that is
    no category (a fraction, out of range) sets no one-hot feature. The one-hot blocks are
    scattered (one write per category column and row), so a wide table costs little more than its
    values."""

    def __init__(self, expansion: Mapping[str, np.ndarray]):
        super().__init__()
        kinds, source = np.asarray(expansion["type"]), np.asarray(expansion["source"], dtype=np.int64)
        fill = np.asarray(expansion["fill"], np.float32)
        value, missing = np.flatnonzero(kinds == 0), np.flatnonzero(kinds == 2)
        one_hot = np.flatnonzero(kinds == 1)
        # the one-hot features, block by block: each block's first feature, its slot, its size and fill
        starts = [int(f) for f in one_hot if f == one_hot[0] or source[f] != source[f - 1] or kinds[f - 1] != 1]
        sizes = [int((source[one_hot] == source[f]).sum()) for f in starts]
        offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64) if starts else np.zeros(0, np.int64)
        self.width = len(one_hot)
        self.parts = [name for name, idx in (("value", value), ("missing", missing), ("one_hot", starts)) if len(idx)]
        # the order of the features: [values, missing indicators, one-hot blocks] -> feature order
        order = np.empty(len(kinds), dtype=np.int64)
        order[np.concatenate([value, missing, one_hot]).astype(np.int64)] = np.arange(len(kinds))
        # buffers, not weights: they come from data.json's encoder, so they are not saved with the model.
        # Made from numpy arrays, no tensor arithmetic: the model may be built on the meta device
        buffers = {
            "value_source": source[value], "value_fill": fill[value], "missing_source": source[missing],
            "category_source": source[starts] if starts else np.zeros(0, np.int64),
            "category_fill": fill[starts] if starts else np.zeros(0, np.float32),
            "category_last": np.asarray(sizes, np.float32) - 1, "category_offset": offsets, "order": order,
        }
        for name, value_ in buffers.items():
            self.register_buffer(name, torch.as_tensor(value_), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = []
        if "value" in self.parts:
            values = x.index_select(1, self.value_source)  # (B, values)
            parts.append(torch.where(torch.isnan(values), self.value_fill, values))
        if "missing" in self.parts:
            parts.append(torch.isnan(x.index_select(1, self.missing_source)).to(x.dtype))  # (B, indicators)
        if "one_hot" in self.parts:
            codes = x.index_select(1, self.category_source)  # (B, category columns)
            codes = torch.where(torch.isnan(codes), self.category_fill, codes)
            valid = (codes >= 0) & (codes <= self.category_last) & (codes == torch.floor(codes))
            at = torch.where(valid, codes, torch.zeros_like(codes)).long() + self.category_offset
            at = torch.where(valid, at, torch.full_like(at, self.width))  # an invalid code writes to a spare column
            blocks = x.new_zeros((x.shape[0], self.width + 1)).scatter(1, at, 1.0)
            parts.append(blocks)  # (B, one-hot features + the spare column, which ``order`` leaves out)
        return torch.cat(parts, dim=1).index_select(1, self.order)


class TableModel(nn.Module):
    """A table run's model: :class:`TableInput` (slots -> features), then the network."""

    def __init__(self, net: nn.Module, encoder: TableEncoder):
        super().__init__()
        self.input = TableInput(encoder.expansion)
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.input(x))


def takes_slots(info: Mapping[str, Any]) -> bool:
    """Whether a table run's model reads slots (runs before them read the (N, F) features)."""
    return (info.get("input") or {}).get("form") == SLOTS and "encoder" in info


def net_input_shape(input_shape: Any, info: Mapping[str, Any]) -> tuple[int, ...]:
    """The shape the network behind :class:`TableInput` reads: (F,) features."""
    if takes_slots(info):
        return (len(info["feature_names"]),)
    return tuple(input_shape)


def wrap_model(model: nn.Module, info: Mapping[str, Any]) -> nn.Module:
    """The network with :class:`TableInput` in front, for runs that read slots."""
    if takes_slots(info):
        return TableModel(model, TableEncoder.from_dict(info["encoder"]))
    return model


def baseline_features(info: Mapping[str, Any]) -> Any:
    """For a run whose model reads slots: slots -> the features the network sees, for the linear
    baselines (dense while a chunk of them is small, a sparse matrix beyond); None otherwise."""
    if not takes_slots(info):
        return None
    encoder = TableEncoder.from_dict(info["encoder"])
    width = len(encoder.feature_names)
    return lambda x: encoder.expand(x) if len(x) * width <= 20_000_000 else encoder.expand_sparse(x)


class TableInputs(RunInputs):
    """A table run's inputs: raw columns -> the run's encoder -> float32 slots (N, S), which the
    model expands. Runs from before the slots (N, F) take the encoder's features; runs from before
    the encoder read their numeric ``features`` and standardise them with data.json's mean/std."""

    kind = "table"
    reads = "table rows"
    json_key = "rows"
    source_keys = ("file", "line", "row")

    def __init__(self, run_dir: Path, info: dict[str, Any]):
        super().__init__(run_dir, info)
        self.encoder = TableEncoder.from_dict(info["encoder"]) if "encoder" in info else None
        self.slots = takes_slots(info)
        self.columns = list(self.encoder.inputs) if self.encoder is not None else list(info["features"])

    # -- raw inputs -> (where, values by column, lines, origin) --
    def _tables(self, inputs: Any) -> Iterator[tuple[str, dict[str, Any], Any, dict[str, Any]]]:
        if isinstance(inputs, (str, Path, np.ndarray, Mapping)) or is_frame(inputs):
            inputs = [inputs]
        elif isinstance(inputs, list) and inputs and all(isinstance(r, Mapping) for r in inputs):
            inputs = [inputs]  # one list of row mappings
        for item in inputs:
            if isinstance(item, (str, Path)):
                for name in expand_paths([item], TABLE_SUFFIXES, "table files"):
                    path = Path(name)
                    if not path.is_file():
                        raise DataError(f"{path}: no such file. Fix: give a table file (.csv, .tsv, .parquet or .jsonl) "
                                        f"with the columns {', '.join(map(repr, self.columns))}.")
                    if path.suffix.lower() not in TABLE_SUFFIXES:
                        raise DataError(f"{path}: this run reads table rows from {', '.join(TABLE_SUFFIXES)} files, not "
                                        f"{path.suffix or 'files without a suffix'}. Fix: save the rows as CSV.")
                    # data.delimiter, if set; runs from before the encoder read cells as text
                    frame, lines = read_frame(path, delimiter=self.info.get("delimiter"), text=self.encoder is None)
                    yield str(path), self._of_frame(frame), lines, {"file": str(path)}
            elif is_frame(item):
                frame, lines = read_frame(item)
                yield "DataFrame", self._of_frame(frame), lines, {}
            elif isinstance(item, np.ndarray):
                if item.ndim != 2 or item.shape[1] != len(self.columns):
                    raise DataError(
                        f"predict: an array of shape {item.shape} is not rows of this table; expected (N, "
                        f"{len(self.columns)}): one column per input column, in the order {', '.join(self.columns)}. "
                        "Fix: pass a pandas DataFrame (columns by name) or an array in that order.")
                values = {name: self._values(item[:, j]) for j, name in enumerate(self.columns)}
                yield "array", values, Lines(len(item)), {}
            elif isinstance(item, Mapping):  # columns: name -> values
                values = {str(k): self._values(list(vs)) for k, vs in item.items()}
                n = len(next(iter(values.values()))) if values else 0
                yield "columns", values, Lines(n), {}
            elif isinstance(item, list):
                yield "rows", self._row_values(item, "rows"), Lines(len(item)), {}
            else:
                raise DataError(f"predict: a table run takes table files (.csv, .tsv, .parquet, .jsonl), DataFrames, "
                                f"lists of rows (mappings of column -> value) or 2-D arrays; got {type(item).__name__}.")

    def _of_frame(self, frame: Any) -> dict[str, Any]:
        """The run's input columns of a frame (the others are not read; absent ones are refused by encode)."""
        return {name: self._values(frame[name]) for name in self.columns if name in frame.columns}

    def _values(self, values: Any) -> Any:
        """A column as the encoder reads it (:class:`ColumnValues`); runs from before the encoder
        read the cells themselves."""
        if self.encoder is None:
            return values.tolist() if hasattr(values, "tolist") else list(values)
        return ColumnValues.of(values)

    def _row_values(self, rows: list[Any], where: str) -> dict[str, ColumnValues]:
        if any(not isinstance(r, Mapping) for r in rows):
            raise DataError(f"{where}: rows must be mappings of column -> value, e.g. {self.json_example()}.")
        missing = sorted({n for r in rows for n in self.columns if n not in r})
        if missing:
            raise DataError(f"{where}: rows lack the column(s) {', '.join(map(repr, missing))} the model was trained "
                            f"on. Fix: give every row {', '.join(map(repr, self.columns))}.")
        return {n: self._values([r[n] for r in rows]) for n in self.columns}

    def encode(self, values: dict[str, Any], lines: Any, where: str) -> torch.Tensor:
        """Values by column -> the model's input: slots (N, S), or features (N, F) for older runs."""
        if self.encoder is not None:
            encode = self.encoder.encode if self.slots else self.encoder.transform
            return torch.from_numpy(encode(values, lines=lines, where=where))
        absent = [c for c in self.columns if c not in values]
        if absent:
            raise DataError(f"{where}: the model was trained on column(s) {', '.join(map(repr, absent))}, which are "
                            f"missing here. Fix: give every row the columns {', '.join(map(repr, self.columns))}.")
        return torch.from_numpy(feature_matrix(values, self.columns, lines, where))

    def batches(self, inputs: Any, batch_size: int, on_error: str = "raise", workers: int = 0) -> Iterator[Batch]:
        check_on_error(on_error)
        for where, values, lines, origin in self._tables(inputs):
            key = "line" if origin.get("file") and lines.unit == "line" else "row"
            for start in range(0, len(lines), batch_size):
                rows = np.arange(start, min(start + batch_size, len(lines)))
                part = {name: _take(v, rows) for name, v in values.items()}
                part_lines = lines.take(rows)
                names = [{**origin, key: line} for line in part_lines]
                try:
                    yield Batch(self.encode(part, part_lines, where), names)
                except DataError:
                    if on_error == "raise":
                        raise
                    yield self._row_by_row(part, part_lines, names, where)

    def _row_by_row(self, values: dict[str, ColumnValues], lines: Any, names: list[dict[str, Any]], where: str) -> Batch:
        """A batch with a bad row: each row alone, so the good ones are answered and the bad named."""
        batch, xs = Batch(None, []), []
        for i, name in enumerate(names):
            try:
                xs.append(self.encode({k: _take(v, [i]) for k, v in values.items()}, lines.take([i]), where))
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
        values = self._row_values(items, "rows")
        return self.encode(values, Lines(len(items)), "rows")

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
        common = {"columns": info.get("features"), "feature_names": info["feature_names"],
                  "feature_groups": info.get("feature_groups"), "encoder": info["encoder"]}
        if not self.slots:  # a run from before the slots: the graph takes the encoded features
            return "table", model, "features", {
                "meaning": f"the {len(info['feature_names'])} encoded features of a table row (feature_names)",
                "preprocessing": {
                    "how": "TableEncoder.from_dict(preprocessing['encoder']).transform({column: cells}) "
                           "(deepworks.data.features): per input column, impute missing cells with the training value, "
                           "scale numbers, one-hot categories (plus an 'other' slot), add missing indicators",
                    **common,
                },
            }
        names = info["input"]["names"]
        return "table", model, "columns", {
            "meaning": f"the {len(names)} values of a table row, one per slot (preprocessing.slots): numbers scaled, "
                       "categories as codes, NaN where a value is missing",
            "preprocessing": {
                "how": "TableEncoder.from_dict(preprocessing['encoder']).encode({column: values}) "
                       "(deepworks.data.features): per input column, a number scaled as the encoder says, a category's "
                       "index in its 'categories' (len(categories) for one never seen in training), an ordinal's "
                       "position, a date's parts; NaN where the value is missing. Imputation, one-hot and the missing "
                       "indicators are inside the graph",
                "slots": names, **common,
            },
        }


def _take(values: Any, rows: Any) -> Any:
    """Rows of a column: :class:`ColumnValues` or a list of cells."""
    if isinstance(values, ColumnValues):
        return values.take(rows)
    return [values[int(i)] for i in rows]

