"""Texts through a frozen sentence encoder (``data.encoder``): each text becomes one float32 vector
(N, dim), encoded once for the whole file and cached on disk (see :mod:`deepworks.data.encoders`);
the model is a head on them. A trained run checks that the installed encoder has the weights it
was trained with (SHA-256 in data.json ``input.encoder``), loads it once, and embeds strings,
files and the server's JSON texts with it. The exported graph is the head; the sidecar names the
encoder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from deepworks.config import Config
from deepworks.data.loaders import TensorData
from deepworks.errors import ConfigError, DataError
from deepworks.kinds.common import SPLITS, PreparedData
from deepworks.kinds.text import TextSource, split_texts


def check_model(config: Config) -> None:
    """With ``data.encoder`` the model reads sentence embeddings (F,): a flat-input model."""
    from deepworks.models.registry import MODELS, takes_flat_input

    name = config.model.name
    if name in MODELS.names() and not takes_flat_input(name):
        flat = [n for n in MODELS.names() if takes_flat_input(n)]
        raise ConfigError(
            f"model.name: {name} cannot read sentence embeddings: data.encoder ({config.data.encoder}) turns each "
            f"text into one vector (F,). Fix: model.name: {' or '.join(flat)}, or remove data.encoder to train {name} "
            "on token ids."
        )


def prepare(config: Config, fold: tuple[int, int | None] | None = None) -> PreparedData:
    """The text split (:func:`~deepworks.kinds.text.split_texts`) read as sentence embeddings."""
    from deepworks.data.encoders import embed_texts, resolve_encoder

    check_model(config)
    s = split_texts(config, fold, "embeddings")
    info, idx = s.info, s.idx
    source = resolve_encoder(config.data.encoder)
    features = config.data.encoder_features
    embedded = embed_texts(source, s.texts, progress=config.train.progress != "none", features=features)
    record = embedded.record
    if config.train.progress != "none":
        how = "read from the cache" if embedded.cached else f"encoded in {embedded.seconds:.1f} s"
        print(f"{info['source']}: {len(s.texts)} texts embedded by {record['name']} ({record['source']}; "
              f"{features} features, {record['dim']} values each), {how}.", flush=True)
    limit = int(record["max_seq_length"]) - 2  # [CLS] and [SEP] take two of the model's positions
    stats = {}
    for name in SPLITS:
        lengths = embedded.token_counts[idx[name]]
        shown = lengths if len(lengths) else np.zeros(1, dtype=np.int64)
        stats[name] = {
            "texts": len(lengths), "empty": int((lengths == 0).sum()), "truncated": int((lengths > limit).sum()),
            "length": {"min": int(shown.min()), "mean": float(shown.mean()), "median": float(np.median(shown)),
                       "p95": float(np.percentile(shown, 95)), "max": int(shown.max())},
        }
    cut = stats["train"]["truncated"]
    if cut:
        print(f"{info['source']}: {cut} of {len(s.raw['train'])} training texts are longer than the encoder's "
              f"{limit} word pieces and are read up to there.", flush=True)
    dim = int(record["dim"])
    info.update({
        "input_shape": [dim],
        # the encoder's origin (name, source, weights' SHA-256, feature kind, dim, max_seq_length): predict
        # loads the same and computes the same kind of features
        "input": {"kind": "embeddings", "dim": dim, "encoder": record},
        "tokens": stats,  # per split: texts, empty, cut at max_seq_length, word pieces per text
    })
    parts = {name: TensorData(torch.from_numpy(embedded.vectors[rows]), s.ys[name]) for name, rows in idx.items()}
    return PreparedData(parts["train"], parts["val"], parts["test"], s.classes, (dim,), info, s.task, raw=s.raw)


def run_encoder(run_dir: str | Path, record: dict[str, Any]) -> tuple[Any, str]:
    """The installed sentence encoder a run was trained on (data.json -> input.encoder) and the
    feature kind it used, after checking that the weights are the ones the run recorded."""
    from deepworks.data.encoders import FEATURE_KINDS, resolve_encoder

    source = resolve_encoder(str(record.get("name")), key=f"{run_dir}: data.encoder")
    if record.get("sha256") and source.sha256 != record["sha256"]:
        raise DataError(
            f"predict: the run {run_dir} was trained on the embeddings of {record.get('name')} with weights "
            f"sha256 {record['sha256'][:12]}... ({record.get('source')}), but {source.folder} holds weights "
            f"sha256 {source.sha256[:12]}... ({source.source}); its embeddings would mean something else to the "
            "trained model. Fix: install the encoder the run was trained with, or train the run again."
        )
    features = str(record.get("features", "sentence"))  # a run from before feature kinds: the sentence embedding
    if features not in FEATURE_KINDS:
        raise DataError(f"predict: the run {run_dir} was trained on {features!r} features of {record.get('name')}, "
                        f"which this deepworks does not compute (it knows {', '.join(FEATURE_KINDS)}). "
                        "Fix: predict with the deepworks version that trained the run, or train the run again.")
    return source, features


class EmbeddingInputs(TextSource):
    """A text run on sentence embeddings: the run's encoder, checked and loaded once."""

    kind = "embeddings"

    def __init__(self, run_dir: Path, info: dict[str, Any]):
        super().__init__(run_dir, info)
        self.record = info["input"]["encoder"]
        self.checked: tuple[Any, str] | None = None
        self.model: Any = None

    def load(self) -> None:
        from deepworks.data.encoders import SentenceEncoder

        if self.model is None:
            self.checked = run_encoder(self.run_dir, self.record)
            self.model = SentenceEncoder.load(self.checked[0])

    def encode(self, texts: list[str]) -> torch.Tensor:
        from deepworks.data.encoders import embed_texts

        self.load()
        source, features = self.checked
        vectors = embed_texts(source, texts, cache=False, progress=False, features=features, encoder=self.model).vectors
        if vectors.shape[1] != int(self.record.get("dim", vectors.shape[1])):
            raise DataError(f"predict: {self.record.get('name')} gives {vectors.shape[1]} values per text; the run was "
                            f"trained on {self.record['dim']}. Fix: install the encoder the run was trained with.")
        return torch.from_numpy(vectors)

    def export_graph(self, model: nn.Module, cfg: Config) -> tuple[str, nn.Module, str, dict[str, Any]]:
        source = self.info["input"]
        return "embeddings", model, "embeddings", {
            "meaning": f"the sentence encoder's {source['encoder'].get('features', 'sentence')} features of each "
                       f"text ({source['dim']} values); the graph is the model on them, not the encoder",
            "preprocessing": {
                "how": "embed each text with the sentence encoder recorded here (same weights: check its sha256), "
                       "as deepworks.data.encoders.embed_texts does; the encoder itself is not in the graph",
                "encoder": source["encoder"], "text_column": self.info.get("text_column"),
            },
        }
