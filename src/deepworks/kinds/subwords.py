"""Texts as a pretrained encoder's subword ids, for ``model.name: transformer``
(:mod:`deepworks.models.transformer`): the texts are split as every text run splits them
(:func:`~deepworks.kinds.text.split_texts`), then tokenized by the encoder's own fast tokenizer,
cut at ``model.max_length`` tokens (special tokens included; the cuts are counted, logged and
recorded in data.json ``tokens``) and padded on the right with its pad id.

The tokenizer is saved in the run directory (``tokenizer/``, ``save_pretrained``) with its
settings in data.json (``tokenizer``), so predict, serve and export tokenize exactly as training
did, without the encoder's folder. Special-token strings inside a text (a literal ``[SEP]``) are
read as text, not as the special token (``split_special_tokens``), so that only padding has the
pad id. Every batch is padded to its longest text, not to max_length (:class:`PadTrim`): stored
ids are cut to the batch's longest text when the batch is drawn (training) or reaches the model
(predict, serve, the ONNX feed). The model computes its attention mask from the pad id, so the
exported graph takes the ids alone, of any length up to max_length.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from deepworks.config import Config, DataConfig
from deepworks.data.loaders import TensorData
from deepworks.errors import ConfigError, DataError
from deepworks.kinds.common import SPLITS, PreparedData
from deepworks.kinds.text import TextSource, bucket_by_length, split_texts

__all__ = ["TOKENIZER_DIR", "PadTrim", "SubwordIds", "SubwordInputs", "prepare", "encode_texts"]

TOKENIZER_DIR = "tokenizer"  # the run directory's copy of the encoder's tokenizer
_OWN_VOCABULARY = ("tokenizer", "lowercase", "min_freq", "max_vocab", "max_length")


class PadTrim:
    """Right-padded ids (B, L) cut to the batch's longest text (at least one column): dynamic
    padding, whatever width the ids were stored at. Only padding has the pad id."""

    def __init__(self, pad_id: int):
        self.pad_id = int(pad_id)

    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        if ids.ndim != 2 or not len(ids):
            return ids
        longest = int((ids != self.pad_id).sum(1).max())
        return ids[:, : max(1, longest)]

    def __repr__(self) -> str:
        return f"PadTrim(pad_id={self.pad_id})"


class SubwordIds(TensorData):
    """A split's ids (N, longest text of the split), each batch cut to its own longest text
    (:class:`PadTrim`). ``max_shape`` is the largest batch input it can give: what the memory
    check prices, rather than the first sample's length."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, pad_id: int, weights: torch.Tensor | None = None,
                 lengths: torch.Tensor | None = None):
        super().__init__(x, y, weights, PadTrim(pad_id), lengths)
        self.pad_id = int(pad_id)
        self.max_shape = (max(1, int((x != pad_id).sum(1).max())) if len(x) else 1,)

    def to(self, device: torch.device) -> SubwordIds:
        return SubwordIds(self.x.to(device), self.y.to(device), self.pad_id, self.weights, self.lengths)


def encode_texts(tokenizer: Any, texts: list[str], max_length: int, padding: str = "longest") -> tuple[torch.Tensor, np.ndarray]:
    """(ids int64 (N, W), each text's tokens before the cut, special tokens included): W is the
    longest text's length up to ``max_length`` (``padding="longest"``) or ``max_length`` itself."""
    if not texts:
        return torch.zeros((0, 1), dtype=torch.int64), np.zeros(0, dtype=np.int64)
    full = tokenizer(texts, add_special_tokens=True, split_special_tokens=True, verbose=False)["input_ids"]
    lengths = np.array([len(ids) for ids in full], dtype=np.int64)
    ids = tokenizer(texts, add_special_tokens=True, split_special_tokens=True, truncation=True, max_length=max_length,
                    padding=padding, return_tensors="pt", return_attention_mask=False, verbose=False)["input_ids"]
    return ids.to(torch.int64), lengths


def _stats(lengths: np.ndarray, max_length: int, specials: int) -> dict[str, Any]:
    """Per split: texts, those with no token but the special ones (empty), those cut, and the
    tokens per text before the cut (special tokens included)."""
    shown = lengths if len(lengths) else np.zeros(1, dtype=np.int64)
    return {
        "texts": len(lengths), "empty": int((lengths <= specials).sum()), "truncated": int((lengths > max_length).sum()),
        "length": {"min": int(shown.min()), "mean": float(shown.mean()), "median": float(np.median(shown)),
                   "p95": float(np.percentile(shown, 95)), "max": int(shown.max())},
    }


def check_config(config: Config) -> None:
    """The run's own vocabulary keys do not apply: the encoder tokenizes with its own."""
    d = config.data
    given = [k for k in _OWN_VOCABULARY if k in d.model_fields_set and getattr(d, k) != DataConfig.model_fields[k].default]
    if given:
        length = " (the length is model.max_length)" if "max_length" in given else ""
        raise ConfigError(f"data.{given[0]} builds a vocabulary of the run's own, but model.name: transformer reads "
                          f"texts with its encoder's tokenizer. Fix: remove data.{', data.'.join(given)}{length}.")


def prepare(config: Config, fold: tuple[int, int | None] | None = None) -> PreparedData:
    """The text split read as the encoder's subword ids (see the module doc)."""
    from deepworks.models.transformer import check_max_length, position_limit, resolve_text_encoder

    check_config(config)
    params = config.model.params
    max_length = int(params.get("max_length", 128))
    source = resolve_text_encoder(str(params.get("encoder")))
    encoder_config = source.config()
    check_max_length(max_length, encoder_config, source.name)
    tokenizer = source.tokenizer()
    encoder_config.pad_token_id = int(tokenizer.pad_token_id)  # the model masks what the tokenizer pads with
    s = split_texts(config, fold, "subwords")
    ids, stats = {}, {}
    for name in SPLITS:
        ids[name], lengths = encode_texts(tokenizer, s.raw[name], max_length)
        stats[name] = _stats(lengths, max_length, tokenizer.num_special_tokens_to_add())
    cut = stats["train"]
    if cut["truncated"] and config.train.progress != "none":
        print(f"{s.info['source']}: {cut['truncated']} of {cut['texts']} training texts were cut at model.max_length = "
              f"{max_length} tokens (the longest has {cut['length']['max']}; 95% have at most "
              f"{cut['length']['p95']:.0f}).", flush=True)
    digest = hashlib.sha256(s.info["split_fingerprint"].encode())
    for name in SPLITS:  # another tokenizer (or max_length) makes other data: evaluate and resume then warn
        digest.update(np.ascontiguousarray(ids[name].numpy()).tobytes())
    pad = int(tokenizer.pad_token_id)
    s.info.update({
        "split_fingerprint": digest.hexdigest(),
        "input_shape": [max_length],
        # the encoder's origin (weights' SHA-256) and architecture: a finished run is rebuilt from these and its weights
        "input": {"kind": "subwords", "vocab_size": len(tokenizer), "pad_index": pad, "encoder": source.record(),
                  "config": json.loads(encoder_config.to_json_string(use_diff=False)),
                  "positions": position_limit(encoder_config)},
        "tokenizer": {"folder": TOKENIZER_DIR, "class": type(tokenizer).__name__, "max_length": max_length,
                      "padding": "right, each batch to its longest text", "truncation": "right",
                      "special_tokens": "added ([CLS] ... [SEP] or the encoder's own); special-token strings in a "
                      "text are read as text (split_special_tokens)", "pad_index": pad},
        "tokens": stats,  # per split: texts, empty, cut at max_length, subword tokens per text before the cut
    })
    parts = {name: SubwordIds(ids[name], s.ys[name], pad) for name in SPLITS}
    if bucket_by_length(config):  # batches of texts of similar length (training shuffled, evaluation sorted):
        for name in SPLITS:        # shorter batches after PadTrim
            parts[name].lengths = (ids[name] != pad).sum(1)

    def save(run_dir: Path) -> None:
        save_tokenizer(tokenizer, Path(run_dir))

    return PreparedData(parts["train"], parts["val"], parts["test"], s.classes, (max_length,), s.info, s.task,
                        raw=s.raw, save=save)


def save_tokenizer(tokenizer: Any, run_dir: Path) -> None:
    """The tokenizer's files (``save_pretrained``) in ``run_dir/tokenizer``, whole or not at all."""
    target = run_dir / TOKENIZER_DIR
    staging = Path(tempfile.mkdtemp(prefix=".tokenizer-", dir=run_dir))
    try:
        tokenizer.save_pretrained(str(staging))
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        if staging.exists():
            shutil.rmtree(staging)


class SubwordInputs(TextSource):
    """A run of ``model.name: transformer``: texts through the tokenizer saved in the run."""

    kind = "subwords"
    input_dtype = torch.int64
    dynamic_axes = {0: "batch", 1: "length"}

    def __init__(self, run_dir: Path, info: dict[str, Any]):
        super().__init__(run_dir, info)
        settings = info.get("tokenizer") or {}
        self.max_length = int(settings.get("max_length", self.shape[0]))
        self.pad_id = int(settings.get("pad_index", (info.get("input") or {}).get("pad_index", 0)))
        self.trim = PadTrim(self.pad_id)
        self.tokenizer: Any = None

    def load(self) -> None:
        if self.tokenizer is not None:
            return
        from transformers import AutoTokenizer

        from deepworks.data.encoders import offline, quiet_loading

        folder = self.run_dir / (self.info.get("tokenizer") or {}).get("folder", TOKENIZER_DIR)
        if not folder.is_dir():
            raise DataError(f"{folder}: missing; the run keeps its encoder's tokenizer there and cannot read texts "
                            "without it. Fix: copy the whole run directory, or train the run again.")
        try:
            with offline(), quiet_loading():
                tokenizer = AutoTokenizer.from_pretrained(str(folder))
        except Exception as exc:  # noqa: BLE001 - damaged files: say which folder
            raise DataError(f"{folder}: the run's tokenizer could not be loaded ({type(exc).__name__}: "
                            f"{str(exc).splitlines()[0][:160] if str(exc) else ''}). Fix: train the run again.") from None
        tokenizer.padding_side = tokenizer.truncation_side = "right"
        if tokenizer.pad_token_id != self.pad_id:
            raise DataError(f"{folder}: the tokenizer pads with id {tokenizer.pad_token_id}, the run with "
                            f"{self.pad_id}; it is not the run's tokenizer. Fix: train the run again.")
        self.tokenizer = tokenizer

    def encode(self, texts: list[str]) -> torch.Tensor:
        """int64 (N, max_length), right-padded: one width for every request, so the server can join
        them in one batch; :meth:`to_model` cuts each batch to its longest text."""
        self.load()
        return encode_texts(self.tokenizer, list(texts), self.max_length, padding="max_length")[0]

    def to_model(self, x: torch.Tensor) -> torch.Tensor:
        return self.trim(x)

    def warmup(self) -> torch.Tensor:
        return self.encode([""])

    def onnx_feed(self, x: torch.Tensor) -> np.ndarray:
        return self.trim(x).cpu().numpy()

    def export_graph(self, model: nn.Module, cfg: Config) -> tuple[str, nn.Module, str, dict[str, Any]]:
        settings, source = self.info.get("tokenizer") or {}, self.info.get("input") or {}
        return "subword_ids", model, "token_ids", {
            "meaning": f"the encoder's subword ids of each text, with its special tokens, cut at {self.max_length} "
                       f"(model.max_length) and right-padded with {self.pad_id} to the batch's longest text; the "
                       "attention mask (ids != pad id) is computed inside the graph",
            "preprocessing": {
                "how": "AutoTokenizer.from_pretrained(RUN/tokenizer)(texts, truncation=True, max_length=max_length, "
                       "padding='longest', split_special_tokens=True)['input_ids'] (transformers)",
                "tokenizer": settings, "text_column": self.info.get("text_column"), "max_length": self.max_length,
                "pad_index": self.pad_id, "vocab_size": source.get("vocab_size"), "encoder": source.get("encoder"),
            },
        }

    def parity_extra(self, split: Any) -> list[tuple[str, torch.Tensor]]:
        """One batch mixing the shortest and longest texts with an empty one, padded to the longest."""
        ids = split.x.cpu()
        order = torch.argsort((ids != self.pad_id).sum(1), stable=True)
        picked = ids[torch.cat([order[:3], order[-3:]])]
        empty = self.encode([""])
        width = max(picked.shape[1], empty.shape[1])
        batch = torch.full((len(picked) + 1, width), self.pad_id, dtype=torch.int64)
        batch[: len(picked), : picked.shape[1]] = picked
        batch[-1, : empty.shape[1]] = empty[0]
        return [("padding", self.trim(batch))]
