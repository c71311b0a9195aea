"""The sequence models rnn, lstm and gru: padding never changes a result, oracles from plain
nn.LSTM and torch.autograd, the per-step input gradients, and a tiny training run that resumes exactly."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from deepworks import Callback, Trainer
from deepworks.errors import ConfigError, DataError, ShapeError
from deepworks.models import create_model
from deepworks.models.rnn import steps_back_norms
from deepworks.models.summary import summarize
from deepworks.runtime import Precision, resolve_precision
from deepworks.training.gradients import gradient_reach

KINDS = ["rnn", "lstm", "gru"]
VOCAB = 20


def token_batch(seqs: list[list[int]], length: int) -> torch.Tensor:
    x = torch.zeros(len(seqs), length, dtype=torch.long)
    for i, s in enumerate(seqs):
        x[i, : len(s)] = torch.tensor(s, dtype=torch.long)
    return x


def text_model(kind, seed=0, **params):
    torch.manual_seed(seed)
    params = {"hidden": 8, "embedding": 6, **params}
    return create_model(kind, input_shape=(9,), num_classes=3, vocab_size=VOCAB, **params).eval()


SEQS = [[3, 4, 5], [6, 7, 8, 9, 10, 11, 2], [5], [12, 13, 14, 15, 16, 17, 18, 19, 2]]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("pool", ["last", "mean", "max"])
def test_a_sequence_alone_and_in_a_padded_batch_give_the_same_output(kind, bidirectional, pool):
    model = text_model(kind, bidirectional=bidirectional, pool=pool, layers=2)
    with torch.no_grad():
        batch = model(token_batch(SEQS, 12))  # padded past the longest sequence too
        for i, s in enumerate(SEQS):
            alone = model(torch.tensor([s]))
            torch.testing.assert_close(alone[0], batch[i], atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", KINDS)
def test_an_empty_sequence_reads_as_one_pad_token(kind):
    model = text_model(kind, bidirectional=True, pool="mean")
    with torch.no_grad():
        out = model(token_batch([[], [4, 5]], 6))
        alone = model(torch.zeros(1, 1, dtype=torch.long))
        everything_empty = model(torch.zeros(3, 5, dtype=torch.long))
    assert torch.isfinite(out).all() and torch.isfinite(everything_empty).all()
    torch.testing.assert_close(out[0], alone[0], atol=1e-6, rtol=0)
    torch.testing.assert_close(everything_empty, alone.expand(3, -1), atol=1e-6, rtol=0)


def test_parameter_counts_match_a_hand_built_lstm_and_the_summary():
    model = create_model("lstm", input_shape=(10,), num_classes=4, vocab_size=30, embedding=8, hidden=16, layers=2,
                         bidirectional=True)
    lstm = nn.LSTM(8, 16, num_layers=2, bidirectional=True, batch_first=True)
    expected = 30 * 8 + sum(p.numel() for p in lstm.parameters()) + (2 * 16 * 4 + 4)
    assert sum(p.numel() for p in model.parameters()) == expected
    s = summarize(model, (10,), vocab_size=30)
    assert s["total_params"] == expected == sum(r["params"] for r in s["layers"])
    rows = {r["name"]: r for r in s["layers"]}
    assert rows["rnn"]["params"] == sum(p.numel() for p in lstm.parameters())
    assert rows["embed"]["output_shape"] == [10, 8]
    assert rows["rnn"]["output_shape"] == [10, 32]  # (steps, hidden * directions), not the packed data
    assert "bidirectional" in rows["rnn"]["detail"] and s["output_shape"] == [4]
    series = summarize(create_model("gru", input_shape=(24, 3), num_classes=6, hidden=5), (24, 3))
    assert [r["output_shape"] for r in series["layers"]] == [[24, 5], [6]]


@pytest.mark.parametrize("kind", KINDS)
def test_series_output_is_a_plain_torch_layer_then_the_head(kind):
    """Oracle: the same weights in a bare nn.RNN/LSTM/GRU, last state, then the linear head."""
    torch.manual_seed(0)
    model = create_model(kind, input_shape=(15, 3), num_classes=8, hidden=7, layers=2).eval()
    layer = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}[kind](3, 7, num_layers=2, batch_first=True)
    layer.load_state_dict(model.rnn.state_dict())
    x = torch.randn(5, 15, 3)
    out, _ = layer(x)
    expected = out[:, -1] @ model.head.weight.T + model.head.bias
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected, atol=1e-5, rtol=0)
    assert model(x).shape == (5, 8)  # forecasting: horizon * targets outputs


@pytest.mark.parametrize("kind", KINDS)
def test_gradients_flow_to_the_inputs_and_every_parameter(kind):
    model = text_model(kind, bidirectional=True, pool="max").train()
    model(token_batch(SEQS, 10)).sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    assert model.embed.weight.grad[0].abs().sum() == 0  # the pad vector never learns
    series = create_model(kind, input_shape=(6, 2), num_classes=1, hidden=4)
    x = torch.randn(3, 6, 2, requires_grad=True)
    series(x).sum().backward()
    assert x.grad is not None and x.grad[:, 0].abs().sum() > 0  # the first step reaches the output


def test_bad_combinations_are_clear_errors():
    with pytest.raises(ConfigError, match="layers"):
        create_model("lstm", input_shape=(5, 2), num_classes=2, dropout=0.2)  # one layer: nothing between layers
    create_model("lstm", input_shape=(5, 2), num_classes=2, dropout=0.2, layers=2)
    with pytest.raises(ConfigError, match="nonlinearity"):
        create_model("gru", input_shape=(5, 2), num_classes=2, nonlinearity="relu")
    with pytest.raises(ConfigError, match="pool"):
        create_model("rnn", input_shape=(5, 2), num_classes=2, pool="first")
    with pytest.raises(ShapeError, match="images"):
        create_model("lstm", input_shape=(1, 8, 8), num_classes=2)
    with pytest.raises(ShapeError, match="token ids"):
        create_model("lstm", input_shape=(5, 2), num_classes=2, vocab_size=10)
    relu = create_model("rnn", input_shape=(5, 2), num_classes=2, nonlinearity="relu")
    assert relu.rnn.nonlinearity == "relu"
    with pytest.raises(ConfigError, match="model.embedding_dropout.*series"):
        create_model("lstm", input_shape=(5, 2), num_classes=2, embedding_dropout=0.3)


def test_embedding_dropout_acts_in_training_only():
    x = token_batch(SEQS, 9)
    plain, dropped = text_model("lstm"), text_model("lstm", embedding_dropout=0.5)
    assert torch.equal(plain(x), dropped(x))  # eval mode: the same weights give the same output
    dropped.train()
    torch.manual_seed(1)
    a = dropped(x)
    # elementwise dropout of the embeddings, scaled by 1 / (1 - p), as nn.Dropout does
    torch.manual_seed(1)
    embedded = nn.functional.dropout(dropped.embed(x), 0.5, training=True)
    b = dropped.head(dropped._pooled(*dropped._recur(embedded, (x != 0).sum(1).clamp(min=1)),
                                     (x != 0).sum(1).clamp(min=1)))
    assert torch.allclose(a, b, atol=1e-6) and not torch.allclose(a, plain(x), atol=1e-3)


def test_the_recurrence_runs_in_fp32_under_cpu_bf16_autocast():
    for kind in KINDS:
        model = text_model(kind, bidirectional=True)
        series = create_model(kind, input_shape=(12, 3), num_classes=2, hidden=8).eval()
        x, w = token_batch(SEQS, 10), torch.randn(4, 12, 3)
        with torch.no_grad():
            ref, ref_series = model(x), series(w)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                low, low_series = model(x), series(w)
        assert low.dtype == torch.bfloat16  # the head follows autocast
        # only the head's bf16 rounding differs: a bf16 recurrence would drift much further
        torch.testing.assert_close(low.float(), ref, atol=3e-2, rtol=0)
        torch.testing.assert_close(low_series.float(), ref_series, atol=3e-2, rtol=0)


def test_auto_precision_stays_fp32_and_memory_format_leaves_sequences_alone(monkeypatch):
    import deepworks.runtime as runtime

    monkeypatch.setattr(runtime, "cpu_supports_bf16", lambda: True)
    cpu = torch.device("cpu")
    cnn = create_model("cnn", input_shape=(1, 8, 8), num_classes=2, filters=[4])
    assert resolve_precision("auto", cpu, cnn).name == "bf16"  # the patch is in force
    for kind in KINDS:
        p = resolve_precision("auto", cpu, create_model(kind, input_shape=(8,), num_classes=2, vocab_size=10))
        assert (p.name, p.channels_last) == ("fp32", False)  # bi-LSTMs measured slower in bf16 on the CPU
    model = text_model("lstm")
    p = Precision("bf16", "cpu", channels_last=True)
    model.to(memory_format=torch.channels_last)  # what the Trainer does with channels_last: on
    x, w = token_batch(SEQS, 10), torch.randn(2, 5, 3)
    assert p.memory_format(x) is x and p.memory_format(w) is w
    with torch.no_grad(), p.autocast():
        assert model(p.memory_format(x)).shape == (4, 3)


def _aligned_by_hand(norms: torch.Tensor, lengths: list[int]) -> list[float]:
    out = []
    for k in range(max(lengths)):
        vals = [float(norms[b, n - 1 - k]) for b, n in enumerate(lengths) if n > k]
        out.append(sum(vals) / len(vals))
    return out


@pytest.mark.parametrize("kind", KINDS)
def test_input_gradient_norms_match_autograd(kind):
    model = text_model(kind, bidirectional=kind == "gru", pool="mean").train()
    x, y = token_batch(SEQS + [[]], 11), torch.tensor([0, 1, 2, 1, 0])
    # oracle: d loss / d embedding output, from torch.autograd.grad on a separate forward
    captured = []
    handle = model.embed.register_forward_hook(lambda m, i, o: captured.append(o))
    torch.manual_seed(1)
    loss = nn.functional.cross_entropy(model(x), y)
    (grad,) = torch.autograd.grad(loss, captured[0])
    handle.remove()
    lengths = [max(len(s), 1) for s in SEQS + [[]]]
    expected = _aligned_by_hand(grad.norm(dim=-1), lengths)

    model.track_input_grads = True
    torch.manual_seed(1)
    nn.functional.cross_entropy(model(x), y).backward()
    model.track_input_grads = False
    got = model.input_grad_norms()
    assert len(got) == max(lengths) == 9
    torch.testing.assert_close(torch.tensor(got), torch.tensor(expected), rtol=1e-5, atol=1e-12)
    assert model.input_grad_norms() is None  # forgotten after reading

    series = create_model(kind, input_shape=(7, 2), num_classes=1, hidden=5)
    w = torch.randn(4, 7, 2, requires_grad=True)
    target = torch.randn(4, 1)
    (gw,) = torch.autograd.grad(nn.functional.mse_loss(series(w), target), w)
    series.track_input_grads = True
    nn.functional.mse_loss(series(w.detach()), target).backward()
    torch.testing.assert_close(torch.tensor(series.input_grad_norms()), gw.norm(dim=-1).mean(0).flip(0), rtol=1e-5,
                               atol=1e-12)


def test_steps_back_alignment_and_reach():
    norms = torch.tensor([[1.0, 2.0, 3.0, 0.0], [4.0, 5.0, 0.0, 0.0]])
    assert steps_back_norms(norms, torch.tensor([3, 2])).tolist() == [4.0, 3.0, 1.0]
    assert gradient_reach([1.0, 0.5, 2e-3, 5e-4, 1.0]) == {"steps": 3, "threshold": 1e-3, "length": 5}
    assert gradient_reach([0.1, 0.2, 0.3])["steps"] == 3
    assert gradient_reach([]) is None


def toy_text(n=192, length=10, seed=0):
    """Does token 5 occur? Random lengths (some empty), ids 2..9."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(2, 10, (n, length), generator=g)
    lengths = torch.randint(0, length + 1, (n,), generator=g)
    x[torch.arange(length)[None, :] >= lengths[:, None]] = 0
    return x, (x == 5).any(1).long()


class StopAt(Callback):
    def __init__(self, step):
        self.step = step

    def on_batch_end(self, trainer, step):
        if step == self.step:
            raise KeyboardInterrupt


def test_a_tiny_lstm_learns_and_resumes_exactly(tmp_path):
    x, y = toy_text()
    vx, vy = toy_text(64, seed=1)
    cfg = {"epochs": 4, "batch_size": 32, "progress": "none", "checkpoint_every_steps": 4, "log_gradients": 3,
           "optimizer": {"name": "adam", "lr": 0.02}}

    def model(seed=0):
        torch.manual_seed(seed)
        return create_model("lstm", input_shape=(10,), num_classes=2, vocab_size=10, hidden=12, embedding=8,
                            bidirectional=True, pool="max")

    full = Trainer(model(), cfg, run_dir=tmp_path / "full")
    full.fit((x, y), (vx, vy))
    assert full.summary["val"]["accuracy"] >= 0.95
    records = [json.loads(line) for line in (tmp_path / "full" / "gradients.jsonl").read_text().splitlines()]
    assert records and all(len(r["time_steps"]) == 10 for r in records)
    reach = full.summary["gradient_reach"]
    assert reach["length"] == 10 and 1 <= reach["steps"] <= 10 and reach["threshold"] == 1e-3
    assert not full.model.track_input_grads and full.model._watched is None
    from deepworks.reporting.context import RunContext
    from deepworks.reporting.sections import SECTIONS

    ctx = RunContext(tmp_path / "full", "", summary=full.summary, gradients=records)  # a Trainer's run: no config.yaml
    page = SECTIONS.get("gradients").render(ctx)
    assert 'id="fig-gradient-time"' in page and f"Gradient reach: {reach['steps']} of 10 steps" in page

    crashed = Trainer(model(), cfg, run_dir=tmp_path / "crash", callbacks=[StopAt(10)])  # mid-epoch 2
    with pytest.raises(KeyboardInterrupt):
        crashed.fit((x, y), (vx, vy))
    resumed = Trainer(model(seed=5), cfg, run_dir=tmp_path / "crash")
    resumed.fit((x, y), (vx, vy), resume=True)
    for name in ("model.safetensors", "checkpoints/last.safetensors"):
        a, b = load_file(tmp_path / "full" / name), load_file(tmp_path / "crash" / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    assert (tmp_path / "full" / "gradients.jsonl").read_text() == (tmp_path / "crash" / "gradients.jsonl").read_text()
    assert resumed.summary["gradient_reach"] == reach


def test_float_inputs_for_a_token_model_are_a_data_error():
    x, y = toy_text(16)
    model = create_model("gru", input_shape=(10,), num_classes=2, vocab_size=10, hidden=4, embedding=4)
    with pytest.raises(DataError, match="token ids"):
        Trainer(model, {"epochs": 1, "progress": "none"}).fit((x.float(), y))


def test_named_initialisers_reach_the_recurrent_weights():
    torch.manual_seed(0)
    model = create_model("lstm", input_shape=(6, 3), num_classes=2, hidden=8, layers=2, init="orthogonal")
    for name, p in model.rnn.named_parameters():
        if name.startswith("weight_hh"):  # (4 * hidden, hidden): orthonormal columns
            torch.testing.assert_close(p.T @ p, torch.eye(8), atol=1e-5, rtol=0)
        if name.startswith("bias"):
            assert p.abs().sum() == 0
