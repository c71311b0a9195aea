"""Recurrent networks for sequences: ``rnn`` (Elman), ``lstm`` and ``gru``.

One model class reads both kinds of sequence input:

* token ids (B, L), int64, padded on the right with index 0 (text): an ``nn.Embedding``
  (``padding_idx=0``) turns them into vectors; a sequence's length is its number of non-pad
  tokens (at least 1: an empty text is read as one pad vector), and the batch is packed
  (``pack_padded_sequence``) so padding never changes a result;
* windows of a series (B, T, F), float: every window has its full length, nothing is packed.

The recurrence is PyTorch's fused ``nn.RNN`` / ``nn.LSTM`` / ``nn.GRU`` (no Python loop over
time steps); its states over the valid steps are pooled (``last``, ``mean`` or ``max``) and a
linear head gives the logits (classification) or the forecast (``horizon * targets`` numbers).

Precision: on the CPU the recurrence always runs in fp32, even inside a bf16 autocast region.
CPU autocast treats the three layers differently (an unpacked LSTM or RNN runs in bf16, a GRU
or a packed LSTM in fp32), bf16 recurrences are slower than fp32 on the CPU, and a long
recurrence loses digits to bf16's 8-bit mantissa; the embedding and the head follow the
autocast region. On GPUs autocast applies as usual (cuDNN's half-precision kernels).

Gradients through time: with ``track_input_grads`` set (the Trainer sets it on the steps
``train.log_gradients`` records), the forward keeps the recurrence's input (the embedded tokens,
or the window itself) and :meth:`SequenceModel.input_grad_norms`, called after backward, gives
the norm of the loss's gradient with respect to the input at each time step, aligned by steps
back from each sequence's last valid step and averaged over the samples that have that step.
"""

from __future__ import annotations

import contextlib
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from deepworks.errors import ConfigError
from deepworks.models.registry import MODELS, sequence_input

__all__ = ["SequenceParams", "RNNParams", "SequenceModel", "rnn", "lstm", "gru", "steps_back_norms"]

_LAYERS = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}


class SequenceParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    hidden: int = Field(128, ge=1, description="units of the recurrent state (per direction)")
    layers: int = Field(1, ge=1, description="stacked recurrent layers")
    bidirectional: bool = Field(False, description="also read each sequence backwards; the states are concatenated")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout between stacked recurrent layers (needs layers >= 2)")
    embedding: int = Field(128, ge=1, description="size of the token embedding (text); ignored for series")
    embedding_dropout: float = Field(
        0.0, ge=0, lt=1, description="dropout on the embedded tokens (text), a remedy for overfitting small corpora"
    )
    pool: Literal["last", "mean", "max"] = Field(
        "last", description="how the states of the valid steps become one vector: the last state, their mean or max"
    )
    head_dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the pooled state, before the head")

    @model_validator(mode="after")
    def _dropout_between_layers(self):
        if self.dropout > 0 and self.layers == 1:
            raise ValueError(
                f"model.dropout {self.dropout:g} acts between stacked recurrent layers, and there is one layer. "
                "Fix: set model.layers to 2 or more, or use model.head_dropout for dropout before the head."
            )
        return self


class RNNParams(SequenceParams):
    nonlinearity: Literal["tanh", "relu"] = Field("tanh", description="the plain RNN's activation")


class SequenceModel(nn.Module):
    """An embedding (token input) or nothing (series), a recurrent stack, pooling and a linear head."""

    def __init__(
        self,
        kind: str,
        input_shape: tuple[int, ...],
        num_classes: int,
        *,
        hidden: int = 128,
        layers: int = 1,
        bidirectional: bool = False,
        dropout: float = 0.0,
        embedding: int = 128,
        embedding_dropout: float = 0.0,
        pool: str = "last",
        head_dropout: float = 0.0,
        nonlinearity: str | None = None,
        vocab_size: int | None = None,
    ):
        super().__init__()
        self.kind, self.pool = kind, pool
        self.tokens = vocab_size is not None
        self.token_ids = self.tokens  # the Trainer keeps integer inputs as ids for such a model
        if self.tokens:
            self.embed = nn.Embedding(int(vocab_size), embedding, padding_idx=0)
            features = embedding
        else:
            if embedding_dropout:
                raise ConfigError(
                    f"model.embedding_dropout: {embedding_dropout:g} drops parts of embedded tokens, and this "
                    "model reads a series (no tokens). Fix: remove it (model.head_dropout acts before the head)."
                )
            self.embed = None
            features = int(input_shape[-1])  # (steps, features)
        self.embed_drop = nn.Dropout(embedding_dropout) if embedding_dropout else None
        extra = {"nonlinearity": nonlinearity} if kind == "rnn" and nonlinearity else {}
        self.rnn = _LAYERS[kind](
            features, hidden, num_layers=layers, batch_first=True, bidirectional=bidirectional,
            dropout=dropout if layers > 1 else 0.0, **extra,
        )
        self.directions = 2 if bidirectional else 1
        self.drop = nn.Dropout(head_dropout) if head_dropout else None
        self.head = nn.Linear(hidden * self.directions, num_classes)
        self.track_input_grads = False  # set by the Trainer on the steps whose gradients it records
        self._watched: tuple[torch.Tensor, torch.Tensor] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.tokens:
            if x.dtype.is_floating_point:
                raise TypeError(f"{self.kind}: expected token ids (integers) shaped (batch, length), got {x.dtype}")
            lengths = (x != 0).sum(1).clamp_(min=1)
            if not self.track_input_grads and not _tracing():
                # padding past the batch's longest text changes nothing (the steps are packed, the pooling
                # masked): cut it, so a batch of short texts (length bucketing) costs what they need.
                # Kept on recorded steps (gradients.jsonl's time steps span the input) and when exporting
                x = x[:, : int(lengths.max())]
            h = self.embed(x)  # (B, L, E)
            if self.embed_drop is not None:
                h = self.embed_drop(h)
        else:
            if x.ndim != 3:
                raise ValueError(f"{self.kind}: expected series windows shaped (batch, steps, features), got {tuple(x.shape)}")
            lengths = None
            h = x
        if self.track_input_grads and torch.is_grad_enabled():
            if h.requires_grad:
                h.retain_grad()
            else:
                h = h.detach().requires_grad_()
            full = torch.full((h.shape[0],), h.shape[1], device=h.device, dtype=torch.long)
            self._watched = (h, lengths if lengths is not None else full)
        out, state = self._recur(h, lengths)
        pooled = self._pooled(out, state, lengths)
        if self.drop is not None:
            pooled = self.drop(pooled)
        return self.head(pooled)

    def _recur(self, h: torch.Tensor, lengths: torch.Tensor | None):
        """The recurrent stack: outputs (B, T, hidden * directions), zero past each length, and
        the last layer's final state of each direction (B, hidden * directions)."""
        steps = h.shape[1]
        cpu = h.device.type == "cpu"
        with torch.autocast("cpu", enabled=False) if cpu else contextlib.nullcontext():
            if cpu:
                h = h.float()
            if lengths is not None:
                packed = pack_padded_sequence(h, lengths.cpu(), batch_first=True, enforce_sorted=False)
                out, state = self.rnn(packed)
                out, _ = pad_packed_sequence(out, batch_first=True, total_length=steps)
            else:
                out, state = self.rnn(h)
        # the last layer's final states, read from its outputs (the same values as h_n, which the
        # ONNX exporter cannot take from a packed sequence): forward after each sequence's last
        # valid step, backward (bidirectional) after the first step
        hidden = out.shape[-1] // self.directions
        if lengths is None:
            end = out[:, -1, :hidden]
        else:
            at = (lengths.to(out.device) - 1).view(-1, 1, 1).expand(-1, 1, hidden)
            end = out[..., :hidden].gather(1, at).squeeze(1)
        last = end if self.directions == 1 else torch.cat([end, out[:, 0, hidden:]], dim=-1)
        return out, last

    def _pooled(self, out: torch.Tensor, last: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
        if self.pool == "last":
            return last
        if lengths is None:  # full windows
            return out.mean(1) if self.pool == "mean" else out.amax(1)
        mask = torch.arange(out.shape[1], device=out.device)[None, :] < lengths[:, None]  # (B, T)
        if self.pool == "mean":
            return (out * mask[..., None]).sum(1) / lengths[:, None].to(out.dtype)
        return out.masked_fill(~mask[..., None], float("-inf")).amax(1)

    def input_grad_norms(self, scale: float = 1.0) -> list[float] | None:
        """After backward of a forward with ``track_input_grads``: the gradient norm at each step
        back from the last valid step (see :func:`steps_back_norms`), times ``scale`` (e.g. 1 / the
        fp16 loss scale); None when nothing was tracked. Forgets the tracked input."""
        watched, self._watched = self._watched, None
        if watched is None or watched[0].grad is None:
            return None
        h, lengths = watched
        norms = steps_back_norms(h.grad.detach().float().norm(dim=-1), lengths)
        return [float(v) * scale for v in norms]


def _tracing() -> bool:
    """Whether the model is being exported or compiled (its shapes must not depend on the data)."""
    return torch.onnx.is_in_onnx_export() or torch.compiler.is_compiling()


def steps_back_norms(norms: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Per-step norms (B, T) of sequences of ``lengths`` (B,) -> (max length,): entry k is the
    mean, over the sequences longer than k, of the norm k steps before the sequence's last step.

    >>> steps_back_norms(torch.tensor([[1., 2., 3.], [4., 5., 0.]]), torch.tensor([3, 2]))
    tensor([4., 3., 1.])
    """
    lengths = lengths.to(norms.device)
    back = torch.arange(int(lengths.max()), device=norms.device)
    position = lengths[:, None] - 1 - back[None, :]  # (B, K)
    valid = position >= 0
    taken = norms.gather(1, position.clamp(min=0)) * valid
    return taken.sum(0) / valid.sum(0)


def _factory(kind: str):
    def build(input_shape: tuple[int, ...], num_classes: int, **params) -> nn.Module:
        return SequenceModel(kind, input_shape, num_classes, **params)

    return build


_DESCRIPTIONS = {
    "rnn": "Elman RNN over token ids (embedding) or series windows; pooled state + linear head",
    "lstm": "LSTM over token ids (embedding) or series windows; pooled state + linear head",
    "gru": "GRU over token ids (embedding) or series windows; pooled state + linear head",
}

rnn = MODELS.register("rnn", params=RNNParams, description=_DESCRIPTIONS["rnn"])(sequence_input(_factory("rnn")))
lstm = MODELS.register("lstm", params=SequenceParams, description=_DESCRIPTIONS["lstm"])(sequence_input(_factory("lstm")))
gru = MODELS.register("gru", params=SequenceParams, description=_DESCRIPTIONS["gru"])(sequence_input(_factory("gru")))
