"""``deepworks inspect``: a model's layers, output shapes, parameters and receptive fields.

This module summarizes a model it is given; building one from a config (which needs the data's
shape, so the data layer and the pipeline) is :func:`deepworks.inspection.inspect_config`.

:func:`summarize` runs one real forward pass (eval mode, no grad, a batch of two zero
images) with hooks on every leaf module, so the shapes it reports are the shapes the model
really produces, not a re-derivation of them::

    >>> from deepworks.models import create_model
    >>> m = create_model("cnn", input_shape=(1, 8, 8), num_classes=10, filters=[16])
    >>> s = summarize(m, (1, 8, 8))
    >>> s["layers"][0]["type"], s["layers"][0]["output_shape"], s["output_shape"]
    ('Conv2d', [16, 8, 8], [10])
    >>> s["total_params"] == sum(p.numel() for p in m.parameters())
    True

Each call of a leaf module is one row (a module called twice, like a shared ReLU, gives two
rows), but a module's parameters are counted at its first call only, and a parameter shared
by several modules once, so the rows' ``params`` add up to ``total_params``. Modules that own
parameters but are never called in forward get a row without an output shape at the end.

The receptive field is the standard recurrence along the height axis,
``r_out = r_in + (k_eff - 1) * j_in`` and ``j_out = j_in * s`` with ``k_eff = d * (k - 1) + 1``,
followed per tensor: a branch (a ResNet's downsample) starts from the tensor it is given,
not from the previous row. Padding does not change it; layers whose output is not an image
(after ``Flatten``) have ``null``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence

from deepworks.errors import ShapeError

__all__ = ["summarize", "render_summary"]

_PADS: tuple[type[nn.Module], ...] = tuple(
    cls
    for cls in (
        getattr(nn, name, None)
        for name in ("ZeroPad2d", "ConstantPad2d", "ReflectionPad2d", "ReplicationPad2d", "CircularPad2d")
    )
    if cls is not None
)
_WINDOWED = (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d, nn.LPPool2d)
_ADAPTIVE = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
_UNKNOWN_GEOMETRY = (nn.ConvTranspose2d, nn.Upsample, nn.Unflatten, nn.PixelShuffle, nn.PixelUnshuffle)


# ----------------------------------------------------------------------------- summarize


def summarize(
    model: nn.Module,
    input_shape: Sequence[int],
    *,
    vocab_size: int | None = None,
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Layer-by-layer summary of ``model`` for one sample of ``input_shape`` (e.g. (C, H, W)).

    With ``vocab_size`` the model reads token ids: the batch is random ids in 2..vocab_size-1
    (0 is padding, 1 unknown), of the full length, drawn without touching the global RNG.
    Returns a JSON-serialisable dict (see the module docstring). The model's train/eval
    flags are restored afterwards; its parameters are left untouched. A forward pass that
    fails raises :class:`ShapeError` naming the layer it failed in.
    """
    shape = tuple(int(s) for s in input_shape)
    if not shape or any(s < 1 for s in shape):
        raise ShapeError(f"input_shape: expected positive sizes such as (channels, height, width), got {shape}")
    if vocab_size is not None:
        low = min(2, int(vocab_size) - 1)
        ids = torch.randint(low, int(vocab_size), (2, *shape), generator=torch.Generator().manual_seed(0))
        x = ids.to(device)
    else:
        dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
        x = torch.zeros((2, *shape), dtype=dtype, device=device)  # 2: BatchNorm1d refuses one sample in training

    names = {m: name for name, m in model.named_modules()}
    hooked = [m for m in names if not list(m.children()) or any(True for _ in m.parameters(recurse=False))]
    rows: list[dict[str, Any]] = []
    counted: set[int] = set()  # ids of parameters already in a row
    called: set[int] = set()  # ids of modules already in a row
    # receptive field per tensor: id -> (tensor kept alive so the id stays unique, (r, j) or None)
    fields: dict[int, tuple[torch.Tensor, tuple[int, int] | None]] = {id(x): (x, (1, 1))}
    last: list[tuple[int, int] | None] = [(1, 1)]  # state of the latest row, for tensors made outside modules
    running: list[nn.Module] = []  # modules whose forward has started but not finished

    def pre_hook(module: nn.Module, inputs: Any) -> None:
        running.append(module)

    def hook(module: nn.Module, inputs: Any, output: Any) -> None:
        if running and running[-1] is module:
            running.pop()
        repeat = id(module) in called
        called.add(id(module))
        mine = list(module.parameters(recurse=False))
        own = [p for p in mine if id(p) not in counted]
        counted.update(id(p) for p in own)
        inp, out = _first_tensor(inputs), _first_tensor(output)
        if inp is not None and id(inp) in fields:
            state = fields[id(inp)][1]
        else:
            state = last[0]
        rf = _receptive(module, state, inp, out)
        if out is not None:
            fields[id(out)] = (out, rf)
        last[0] = rf
        rows.append(_row(len(rows), names[module], module, output, own, rf, shared=repeat and bool(mine)))

    handles = []
    modes = {m: m.training for m in names}
    try:
        for m in hooked:
            handles.append(m.register_forward_pre_hook(pre_hook))
            handles.append(m.register_forward_hook(hook))
        model.eval()
        with torch.no_grad():
            try:
                output = model(x)
            except (RuntimeError, ValueError, IndexError, TypeError) as exc:
                where = _where(running[-1], names) if running else "the model's own forward"
                first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                raise ShapeError(
                    f"model: the forward pass for input shape {shape} fails in {where}: {first_line}. "
                    "Check the input shape (data.image_size, data.channels) against the model's layers."
                ) from exc
    finally:
        for h in handles:
            h.remove()
        for m, training in modes.items():
            m.training = training

    # modules that own parameters but forward never called: list them so the totals add up
    for m in hooked:
        own = [p for p in m.parameters(recurse=False) if id(p) not in counted]
        if own:
            counted.update(id(p) for p in own)
            row = _row(len(rows), names[m], m, None, own, None, shared=False)
            row["detail"] = ", ".join(t for t in (row["detail"], "not called in forward") if t)
            rows.append(row)

    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {
        "input_shape": list(shape),
        "layers": rows,
        "total_params": total,
        "trainable_params": trainable,
        "frozen_params": total - trainable,
        "output_shape": _sample_shape(output),
    }


def _first_tensor(value: Any) -> torch.Tensor | None:
    """The tensor a module returned (the first one of a tuple, list or dict)."""
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, Mapping):
        value = list(value.values())
    if isinstance(value, (tuple, list)):
        for item in value:
            found = _first_tensor(item)
            if found is not None:
                return found
    return None


def _sample_shape(value: Any) -> list[int] | None:
    """The shape of one sample of what a module returned: its first tensor without the batch
    axis; a recurrent layer's packed output (a PackedSequence) as the padded (steps, features)."""
    if isinstance(value, PackedSequence):
        return [len(value.batch_sizes), *(int(s) for s in value.data.shape[1:])]
    if isinstance(value, (tuple, list)) and value and isinstance(value[0], PackedSequence):
        return _sample_shape(value[0])
    out = _first_tensor(value)
    return [int(s) for s in out.shape[1:]] if out is not None else None


def _where(module: nn.Module, names: dict[nn.Module, str]) -> str:
    name = names.get(module, "")
    text = f"layer {name!r} ({type(module).__name__}" if name else f"the model ({type(module).__name__}"
    detail = _detail(module)
    return f"{text}{' ' + detail if detail else ''})"


def _row(
    index: int,
    name: str,
    module: nn.Module,
    out: Any,
    own: list[nn.Parameter],
    rf: tuple[int, int] | None,
    *,
    shared: bool,
) -> dict[str, Any]:
    return {
        "index": index,
        "name": name or "(model)",
        "type": type(module).__name__,
        "output_shape": _sample_shape(out),
        "params": sum(p.numel() for p in own),
        "trainable": sum(p.numel() for p in own if p.requires_grad),
        "detail": _detail(module),
        "receptive_field": rf[0] if rf else None,
        "jump": rf[1] if rf else None,
        "shared": shared,  # a repeated call of a module with parameters: they are in its first row
    }


def _pair(value: Any) -> tuple[int, int]:
    if isinstance(value, (tuple, list)):
        return (int(value[0]), int(value[-1])) if value else (1, 1)
    return int(value), int(value)


def _receptive(
    module: nn.Module,
    state: tuple[int, int] | None,
    inp: torch.Tensor | None,
    out: torch.Tensor | None,
) -> tuple[int, int] | None:
    """(receptive field, jump) along H after ``module``, or None where the output is no image."""
    if state is None or out is None or out.ndim != 4:
        return None
    r, j = state
    if isinstance(module, _WINDOWED):
        k = _pair(module.kernel_size)[0]
        stride = getattr(module, "stride", None)
        s = _pair(stride)[0] if stride not in (None, ()) else k  # pooling: stride defaults to the window
        d = _pair(getattr(module, "dilation", 1))[0]
        return r + d * (k - 1) * j, j * s
    if isinstance(module, _ADAPTIVE) and inp is not None and inp.ndim == 4:
        h_in, h_out = int(inp.shape[-2]), int(out.shape[-2])
        # window i covers [floor(i*h_in/h_out), ceil((i+1)*h_in/h_out)): widest window, mean step
        k = max(math.ceil((i + 1) * h_in / h_out) - (i * h_in) // h_out for i in range(h_out))
        return r + (k - 1) * j, j * max(h_in // h_out, 1)
    if isinstance(module, _PADS):
        return r, j
    if isinstance(module, _UNKNOWN_GEOMETRY):
        return None
    if inp is not None and inp.ndim == 4 and inp.shape[-2:] == out.shape[-2:]:
        return r, j  # element-wise or per-channel (norms, activations, dropout)
    return None


def _num(value: float) -> str:
    return f"{value:g}"


def _detail(module: nn.Module) -> str:
    """Short human text: '3x3 s1 p1, 1->32', '2x2 s2', '784->128', 'p=0.25', ..."""
    m = module
    if isinstance(m, nn.modules.conv._ConvNd):
        k = "x".join(str(v) for v in m.kernel_size)
        s = "x".join(str(v) for v in m.stride) if len(set(m.stride)) > 1 else str(m.stride[0])
        if isinstance(m.padding, str):
            p = m.padding
        else:
            p = "x".join(str(v) for v in m.padding) if len(set(m.padding)) > 1 else str(m.padding[0])
        parts = [f"{k} s{s} p{p}"]
        if any(d != 1 for d in m.dilation):
            parts.append(f"d{m.dilation[0]}")
        if m.groups != 1:
            parts.append(f"g{m.groups}")
        text = " ".join(parts) + f", {m.in_channels}->{m.out_channels}"
        return text + ("" if m.bias is not None else ", no bias")
    if isinstance(m, (nn.MaxPool2d, nn.AvgPool2d, nn.LPPool2d)):
        k = _pair(m.kernel_size)
        s = _pair(m.stride if m.stride not in (None, ()) else m.kernel_size)
        ks = f"{k[0]}x{k[1]}"
        text = f"{ks} s{s[0] if s[0] == s[1] else f'{s[0]}x{s[1]}'}"
        pad = _pair(getattr(m, "padding", 0))
        if any(pad):
            text += f" p{pad[0] if pad[0] == pad[1] else f'{pad[0]}x{pad[1]}'}"
        return text
    if isinstance(m, _ADAPTIVE):
        size = m.output_size
        size = size if isinstance(size, (tuple, list)) else (size, size)
        return "-> " + "x".join("*" if v is None else str(v) for v in size)
    if isinstance(m, _PADS):
        left, right, top, bottom = m.padding
        return f"pad l{left} r{right} t{top} b{bottom}"
    if isinstance(m, nn.Linear):
        return f"{m.in_features}->{m.out_features}" + ("" if m.bias is not None else ", no bias")
    if isinstance(m, nn.modules.dropout._DropoutNd):
        return f"p={_num(m.p)}"
    if isinstance(m, nn.modules.batchnorm._NormBase):
        return f"{m.num_features} features"
    if isinstance(m, nn.Flatten):
        return f"dims {m.start_dim}..{m.end_dim}"
    if isinstance(m, nn.LeakyReLU):
        return f"slope {_num(m.negative_slope)}"
    if isinstance(m, (nn.ELU, nn.CELU)):
        return f"alpha {_num(m.alpha)}"
    if isinstance(m, nn.PReLU):
        return f"learned slope x{m.num_parameters}"
    if isinstance(m, nn.GELU):
        return "tanh approx." if m.approximate == "tanh" else "exact"
    if isinstance(m, (nn.Softmax, nn.LogSoftmax)):
        return f"dim {m.dim}"
    if isinstance(m, (nn.ReLU, nn.ReLU6, nn.SiLU, nn.Hardswish, nn.Hardsigmoid)):
        return "in place" if getattr(m, "inplace", False) else ""
    if isinstance(m, nn.Embedding):
        pad = f", pad {m.padding_idx}" if m.padding_idx is not None else ""
        return f"{m.num_embeddings}x{m.embedding_dim}{pad}"
    if isinstance(m, nn.RNNBase):
        parts = [f"{m.input_size}->{m.hidden_size}"]
        if m.num_layers > 1:
            parts.append(f"{m.num_layers} layers")
        if m.bidirectional:
            parts.append("bidirectional")
        if isinstance(m, nn.RNN) and m.nonlinearity != "tanh":
            parts.append(m.nonlinearity)
        if m.num_layers > 1 and m.dropout:
            parts.append(f"dropout {_num(m.dropout)}")
        return ", ".join(parts)
    return ""


# ----------------------------------------------------------------------------- rendering


def _shape_text(shape: Sequence[int] | None) -> str:
    return "x".join(str(s) for s in shape) if shape is not None else "-"


def render_summary(summary: Mapping[str, Any]):
    """A rich table of ``summary``'s layers, then the parameter totals."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    title = None
    if summary.get("model"):
        title = f"{summary['model']}"
        if summary.get("dataset"):
            title += f" on {summary['dataset']}"
        title += f", input {_shape_text(summary.get('input_shape'))}"
    table = Table(title=title, title_justify="left", show_edge=False, pad_edge=False)
    table.add_column("#", justify="right", style="dim")
    table.add_column("layer")
    table.add_column("output shape", justify="right")
    table.add_column("params", justify="right")
    table.add_column("trainable", justify="center")
    table.add_column("receptive field", justify="right")
    for row in summary["layers"]:
        layer = Text()
        if row["name"] and not row["name"].isdigit():
            layer.append(f"{row['name']}: ", style="dim")
        layer.append(row["type"], style="bold")
        if row.get("detail"):
            layer.append(f" {row['detail']}")
        params, trainable = row["params"], row["trainable"]
        if row.get("shared"):
            params_text, train_text = "(shared)", "-"
        else:
            params_text = f"{params:,}" if params else "-"
            train_text = "-" if not params else "yes" if trainable == params else "no" if not trainable else "partial"
        rf = row.get("receptive_field")
        if rf is None:
            rf_text = "-"
        else:
            rf_text = f"{rf}" if row.get("jump") in (None, 1) else f"{rf} (jump {row['jump']})"
        table.add_row(str(row["index"]), layer, _shape_text(row["output_shape"]), params_text, train_text, rf_text)
    totals = Text()
    totals.append("total params: ", style="bold")
    totals.append(f"{summary['total_params']:,}")
    totals.append("   trainable: ", style="bold")
    totals.append(f"{summary['trainable_params']:,}")
    totals.append("   frozen: ", style="bold")
    totals.append(f"{summary['frozen_params']:,}")
    if summary.get("output_shape") is not None:
        totals.append("   output: ", style="bold")
        totals.append(_shape_text(summary["output_shape"]))
    return Group(table, Text(), totals)
