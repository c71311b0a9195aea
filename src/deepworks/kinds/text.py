"""Texts as token ids: raw strings -> split -> a tokenizer and vocabulary fitted on the training
texts -> int64 ids (N, max_length), right-padded with 0 (see :mod:`deepworks.data.text`). A
trained run reads strings, DataFrames and CSV/Parquet files (their text column), other files (one
text per line), and the server's JSON texts, through that one encoder. :mod:`deepworks.kinds.embeddings`
shares the split (:func:`split_texts`) and reads the same inputs (:class:`TextSource`)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from deepworks.config import TEXT_TRANSFORMER, Config
from deepworks.data.leakage import apply_policy, find_duplicates
from deepworks.data.loaders import TensorData
from deepworks.data.memory import given_frame
from deepworks.data.splits import apply_subset, split_indices
from deepworks.data.tabular import Table, is_frame, table_target
from deepworks.data.text import TextEncoder, load_text_from_config, read_text_inputs
from deepworks.errors import DataError
from deepworks.kinds.common import (
    SPLITS, Batch, PreparedData, RunInputs, apply_fold, check_on_error, class_counts, data_seed, fingerprint,
    subset_record,
)
from deepworks.training.tasks import Classification, Regression, Task


@dataclass
class SplitTexts:
    """A text table split: raw strings per split, labels, and data.json's common part."""

    texts: list[str]  # every text of the file, in file order
    idx: dict[str, np.ndarray]
    raw: dict[str, list[str]]
    ys: dict[str, torch.Tensor]
    classes: list[str]
    info: dict[str, Any]
    task: Task


def split_texts(config: Config, fold: tuple[int, int | None] | None, kind: str) -> SplitTexts:
    """Read the texts, split them (stratified, grouped by data.group_by), fold, subset and drop
    duplicates: the steps token ids and sentence embeddings share."""
    d = config.data
    texts = load_text_from_config(d, given_frame(d))  # a DataFrame given in Python, if one was
    where = texts.source
    # the labels as a table's target: the same class order and checks (at least 2 classes); texts are
    # classified unless data.task: regression asks for a number per text
    target = Table(Path(where), {texts.text_column: texts.texts}, texts.target_name, texts.target, texts.lines)
    regression = d.task == "regression"
    y, classes, _ = table_target(target, "regression" if regression else "classification")
    groups = np.asarray(texts.groups) if texts.groups else None
    seed = data_seed(config)
    idx = split_indices(y, stratify=not regression, groups=groups, val_fraction=d.val_fraction,
                        test_fraction=d.test_fraction, seed=seed, what=where)
    if fold is not None:
        idx.update(apply_fold(idx, y, fold, not regression, groups, seed, where))
    if d.subset is not None:
        idx, classes, remap = apply_subset(idx, y, d.subset, classes, where=where)
        y = remap[y]  # the kept classes' labels 0..k-1; the texts left out are indexed no more
    # exact duplicate texts (as read: surrounding spaces stripped, case kept) within and across splits
    hashes = np.array([hashlib.blake2b(t.encode(), digest_size=16).hexdigest() for t in texts.texts])
    duplicates = find_duplicates(hashes, idx)
    idx = apply_policy(duplicates, idx, d.on_duplicates, what=where)
    raw = {name: [texts.texts[i] for i in rows] for name, rows in idx.items()}
    if regression:  # standardised with the training split's mean and std, as a table's target
        mean, std = float(y[idx["train"]].mean()), float(y[idx["train"]].std())
        std = std if std > 0 else 1.0
        task: Task = Regression([texts.target_name], [mean], [std])
        ys = {name: torch.from_numpy(((y[rows] - mean) / std).astype(np.float32))[:, None] for name, rows in idx.items()}
    else:
        task = Classification(classes)
        ys = {name: torch.from_numpy(y[rows].astype(np.int64)) for name, rows in idx.items()}
    info = {
        "dataset": texts.name,
        "source": where,
        "kind": kind,
        "text_column": texts.text_column,
        "target": texts.target_name,
        "classes": classes,
        "sizes": {name: len(rows) for name, rows in idx.items()},
        "class_counts": class_counts(ys, len(classes)) if not regression else None,
        "official_test": False,
        "split_fingerprint": fingerprint(
            idx, lambda name: np.ascontiguousarray(y[idx[name]]).tobytes(),
            lambda name: "".join(hashes[idx[name]]).encode(),  # an edited text changes the data too
        ),
        "task": task.record(),
        "duplicates": duplicates.to_dict(d.on_duplicates),
        **subset_record(config, classes),
    }
    return SplitTexts(texts.texts, idx, raw, ys, classes, info, task)


RECURRENT = ("rnn", "lstm", "gru")


def bucket_by_length(config: Config) -> bool:
    """``data.bucket_by_length``; unset, on for the models whose cost follows the batch's longest
    text: recurrent ones (packed: steps up to the longest) and transformer encoders (padded to it)."""
    chosen = config.data.bucket_by_length
    return chosen if chosen is not None else config.model.name in (*RECURRENT, TEXT_TRANSFORMER)


def prepare(config: Config, fold: tuple[int, int | None] | None = None) -> PreparedData:
    """Texts -> token ids from a vocabulary fitted on the training texts."""
    d = config.data
    s = split_texts(config, fold, "text")
    encoder = TextEncoder.fit(s.raw["train"], tokenizer=d.tokenizer, lowercase=d.lowercase, min_freq=d.min_freq,
                              max_vocab=d.max_vocab, max_length=d.max_length)
    encoded = {name: encoder.encode(s.raw[name]) for name in SPLITS}
    stats = {name: e.stats() for name, e in encoded.items()}
    cut = stats["train"]["truncated"]
    if cut:
        print(f"{s.info['source']}: {cut} of {len(s.raw['train'])} training texts are longer than data.max_length = "
              f"{d.max_length} tokens and keep their first {d.max_length} (the longest has "
              f"{stats['train']['length']['max']}; 95% have at most {stats['train']['length']['p95']:.0f}).", flush=True)
    s.info.update({
        "input_shape": [d.max_length],
        "input": {"kind": "tokens", "vocab_size": len(encoder.vocab), "pad_index": 0, "unk_index": 1},
        "text": encoder.to_dict(),  # tokenizer, settings and the vocabulary: predict encodes raw strings with it
        "tokens": stats,  # per split: texts, empty, truncated, unknown_rate, length statistics (before truncation)
    })
    parts = {name: TensorData(encoded[name].ids, s.ys[name]) for name in SPLITS}
    if bucket_by_length(config):  # batches of texts of similar length (training shuffled, evaluation sorted):
        for name in SPLITS:        # a packed LSTM runs fewer steps
            parts[name].lengths = (encoded[name].ids != 0).sum(1)
    return PreparedData(parts["train"], parts["val"], parts["test"], s.classes, (d.max_length,), s.info, s.task,
                        raw=s.raw)


class TextSource(RunInputs):
    """Inputs of a text run: strings (a text each), pandas DataFrames and files: a DataFrame's, a
    CSV or Parquet file's text column (data.json ``text_column``), any other file's lines, one text
    per line. A ``str`` is a text unless it names an existing file; a :class:`~pathlib.Path` is
    always a file."""

    reads = "texts"
    json_key = "texts"
    source_keys = ("file", "line", "row", "text")

    def _texts(self, inputs: Any) -> tuple[list[str], list[dict[str, Any]]]:
        if isinstance(inputs, (str, Path)) or is_frame(inputs):
            inputs = [inputs]
        strings: list[str] = []
        names: list[dict[str, Any]] = []
        for item in inputs:
            if isinstance(item, Path) or is_frame(item) or (isinstance(item, str) and "\n" not in item
                                                              and _is_file(item)):
                more, where = read_text_inputs([item], self.info.get("text_column", "text"))
                strings += more
                names += [{**w, "text": t} for w, t in zip(where, more)]
            elif isinstance(item, str):
                strings.append(item)
                names.append({"text": item})
            else:
                raise DataError(f"predict: texts must be strings, e.g. texts=['a fine film']; got "
                                f"{type(item).__name__}.")
        if not strings:
            raise DataError("predict: no texts given. Fix: give strings, or files with one text per line.")
        return strings, names

    def encode(self, texts: list[str]) -> torch.Tensor:
        raise NotImplementedError

    def batches(self, inputs: Any, batch_size: int, on_error: str = "raise", workers: int = 0) -> Iterator[Batch]:
        check_on_error(on_error)
        strings, names = self._texts(inputs)
        for start in range(0, len(strings), batch_size):
            yield Batch(self.encode(strings[start:start + batch_size]), names[start:start + batch_size])

    def from_json(self, items: list[Any]) -> torch.Tensor:
        if any(not isinstance(t, str) for t in items):
            raise DataError('texts must be strings, e.g. {"texts": ["a fine film"]}.')
        return self.encode(list(items))

    def json_example(self) -> str:
        return '{"texts": ["a fine film"]}'


class TokenInputs(TextSource):
    """A text run on token ids: the run's tokenizer and vocabulary (data.json ``text``)."""

    kind = "text"
    input_dtype = torch.int64

    def __init__(self, run_dir: Path, info: dict[str, Any]):
        super().__init__(run_dir, info)
        self.encoder = TextEncoder.from_dict(info["text"])

    def encode(self, texts: list[str]) -> torch.Tensor:
        return self.encoder.encode(texts).ids  # int64 (N, max_length)

    def warmup(self) -> torch.Tensor:
        return torch.zeros((1, *self.shape), dtype=torch.int64)

    def export_graph(self, model: nn.Module, cfg: Config) -> tuple[str, nn.Module, str, dict[str, Any]]:
        source, shape = self.info.get("input") or {}, self.shape
        return "tokens", model, "token_ids", {
            "meaning": f"token ids of each text, right-padded with {source.get('pad_index', 0)} to "
                       f"{shape[0]} (data.max_length); longer texts keep their first {shape[0]} tokens",
            "preprocessing": {
                "how": "TextEncoder.from_dict(preprocessing['text']).encode(texts).ids (deepworks.data.text): "
                       "tokenize (lowercased if the settings say so), look each token up in the vocabulary "
                       "(unknown -> unk_index), cut or pad with pad_index to max_length",
                "text": self.info["text"], "text_column": self.info.get("text_column"), "max_length": shape[0],
                "pad_index": source.get("pad_index", 0), "unk_index": source.get("unk_index", 1),
                "vocab_size": source.get("vocab_size"),
            },
        }

    def parity_extra(self, split: Any) -> list[tuple[str, torch.Tensor]]:
        """One batch mixing the shortest and longest texts with an empty one (padding only)."""
        ids = split.inputs().cpu()
        order = torch.argsort((ids != 0).sum(1), stable=True)
        picked = torch.cat([order[:3], order[-3:]])
        return [("padding", torch.cat([ids[picked], torch.zeros_like(ids[:1])]))]


def _is_file(text: str) -> bool:
    try:
        return Path(text).expanduser().is_file()
    except (OSError, ValueError):  # a long text is no file name
        return False
