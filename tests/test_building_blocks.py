"""Building blocks: initialisers, activations with parameters, penalties, clipping, gradient flow."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from deepworks import Trainer, create_model
from deepworks.config import load_config
from deepworks.errors import ConfigError, TrainingError
from deepworks.models import ACTIVATIONS, INITIALIZERS
from deepworks.training.regularization import penalized_weights, weight_penalty
from deepworks.training.step import train_step


def data(n=120, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 3
    x = torch.randn(3, 1, 6, 6, generator=g)[y] * 2 + torch.randn(n, 1, 6, 6, generator=g)
    return x, y


@pytest.mark.parametrize("init", INITIALIZERS.names())
@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_every_initialiser_builds_and_trains_a_step(init, name):
    torch.manual_seed(0)
    kw = {"filters": [4]} if name == "cnn" else {}
    model = create_model(name, input_shape=(1, 6, 6), num_classes=3, init=init, **kw)
    if init != "default":  # biases start at zero unless asked
        assert all(float(m.bias.detach().abs().sum()) == 0 for m in model.modules()
                   if isinstance(m, (nn.Linear, nn.Conv2d)) and m.bias is not None)
    x, y = data()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loss, _ = train_step(model, x, y, opt, nn.CrossEntropyLoss())
    assert torch.isfinite(loss) and all(torch.isfinite(p).all() for p in model.parameters())


def test_he_and_xavier_have_their_textbook_variance():
    torch.manual_seed(0)
    model = create_model("mlp", input_shape=(1, 32, 32), num_classes=10, hidden=[512], init="he_normal")
    w = model[1].weight  # Linear(1024, 512)
    assert float(w.detach().std()) == pytest.approx(math.sqrt(2 / 1024), rel=0.05)
    assert float(model[1].bias.detach().abs().sum()) == 0  # biases start at zero unless asked
    model = create_model("mlp", input_shape=(1, 32, 32), num_classes=10, hidden=[512], init="xavier_uniform",
                         zero_bias=False)
    w = model[1].weight
    bound = math.sqrt(6 / (1024 + 512))
    assert float(w.detach().abs().max()) <= bound and float(w.detach().std()) == pytest.approx(bound / math.sqrt(3), rel=0.05)
    assert float(model[1].bias.detach().abs().sum()) > 0
    q = create_model("mlp", input_shape=(1, 4, 4), num_classes=3, hidden=[8], init="orthogonal")[1].weight
    torch.testing.assert_close(q @ q.T, torch.eye(8), atol=1e-5, rtol=0)


def test_unknown_initialiser_is_a_config_error():
    with pytest.raises(ConfigError) as e:
        load_config({"data": {"dataset": "digits"}, "model": {"name": "cnn", "init": "he_norml"}})
    assert "model.init" in str(e.value) and "'he_normal'" in str(e.value)


def test_activation_parameters_reach_the_layers():
    model = create_model("cnn", input_shape=(1, 6, 6), num_classes=3, filters=[4],
                         activation={"name": "leaky_relu", "negative_slope": 0.2})
    acts = [m for m in model.modules() if isinstance(m, nn.LeakyReLU)]
    assert acts and all(a.negative_slope == 0.2 for a in acts)
    model = create_model("mlp", input_shape=(1, 6, 6), num_classes=3, activation={"name": "elu", "alpha": 0.5})
    assert all(m.alpha == 0.5 for m in model.modules() if isinstance(m, nn.ELU))
    prelu = create_model("mlp", input_shape=(1, 6, 6), num_classes=3, activation="prelu")
    slopes = [m.weight for m in prelu.modules() if isinstance(m, nn.PReLU)]
    assert slopes and all(s.requires_grad for s in slopes)  # the slope is learned
    with pytest.raises(ConfigError) as e:
        load_config({"data": {"dataset": "digits"}, "model": {"name": "mlp", "activation": {"name": "elu", "alpah": 1}}})
    assert "alpah" in str(e.value)
    with pytest.raises(ConfigError) as e:
        load_config({"data": {"dataset": "digits"}, "model": {"name": "mlp", "activation": "swishh"}})
    assert "'swish'" in str(e.value) and "relu" in str(e.value)


@pytest.mark.parametrize("activation", ACTIVATIONS.names())
def test_forward_and_backward_match_numeric_gradients(activation):
    """Autograd through our layers equals central finite differences (float64)."""
    torch.manual_seed(0)
    model = create_model("cnn", input_shape=(1, 5, 5), num_classes=3, filters=[2], hidden=[4], dropout=0.0,
                         head_dropout=0.0, batch_norm=False, activation=activation).double()
    x, y = torch.randn(4, 1, 5, 5, dtype=torch.float64), torch.tensor([0, 1, 2, 1])
    loss_fn = nn.CrossEntropyLoss()
    loss = loss_fn(model(x), y)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    eps = 1e-6
    with torch.no_grad():
        for p, g in zip(model.parameters(), grads):
            flat = p.view(-1)
            for i in range(0, flat.numel(), max(1, flat.numel() // 5)):  # a few entries of every tensor
                old = float(flat[i])
                flat[i] = old + eps
                up = float(loss_fn(model(x), y))
                flat[i] = old - eps
                down = float(loss_fn(model(x), y))
                flat[i] = old
                numeric = (up - down) / (2 * eps)
                assert float(g.view(-1)[i]) == pytest.approx(numeric, abs=1e-6, rel=1e-4)


def test_l1_l2_penalty_skips_biases_and_norm_layers():
    model = create_model("cnn", input_shape=(1, 6, 6), num_classes=3, filters=[4], hidden=[5])
    weights = penalized_weights(model)
    kinds = {type(m).__name__ for m in model.modules() for p in m.parameters(recurse=False)
             if any(p is w for w in weights)}
    assert kinds == {"Conv2d", "Linear"}
    assert not any(w.ndim < 2 for w in weights)
    value = weight_penalty(weights, l1=0.1, l2=0.2)
    expected = sum(0.1 * w.abs().sum() + 0.1 * (w**2).sum() for w in weights)
    torch.testing.assert_close(value, expected)
    value.backward()
    for w in weights:  # d/dw = l1 sign(w) + l2 w
        torch.testing.assert_close(w.grad, 0.1 * w.sign() + 0.2 * w)


def test_l2_shrinks_weights_and_l1_makes_them_sparse():
    x, y = data()

    def train(**kw):
        torch.manual_seed(0)
        model = create_model("softmax", input_shape=(1, 6, 6), num_classes=3)
        Trainer(model, {"epochs": 30, "progress": "none", "precision": "fp32", "batch_size": 16,
                        "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.0}, **kw}).fit((x, y))
        return model[1].weight.detach()

    plain, l2, l1 = train(), train(l2=1.0), train(l1=0.05)
    assert l2.norm() < 0.6 * plain.norm()
    assert (l1.abs() < 1e-2).float().mean() > (plain.abs() < 1e-2).float().mean() + 0.2


def test_clip_grad_norm_bounds_the_update():
    torch.manual_seed(0)
    model = nn.Linear(10, 3)
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    x, y = torch.randn(8, 10) * 100, torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    train_step(model, x, y, opt, nn.CrossEntropyLoss(), clip_grad_norm=0.5)
    step = torch.cat([(p.detach() - b).view(-1) for p, b in zip(model.parameters(), before)])
    assert float(step.norm()) == pytest.approx(0.5, rel=1e-4)  # SGD lr 1: the update is the clipped gradient


def test_gradient_flow_is_recorded_and_vanishing_layers_flagged(tmp_path):
    x, y = data()
    torch.manual_seed(0)
    deep = create_model("mlp", input_shape=(1, 6, 6), num_classes=3, hidden=[16] * 12, activation="sigmoid",
                        dropout=0.0, init="xavier_normal")
    trainer = Trainer(deep, {"epochs": 1, "progress": "none", "log_gradients": 2, "batch_size": 30}, run_dir=tmp_path)
    trainer.fit((x, y))
    lines = [json.loads(line) for line in (tmp_path / "gradients.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [2, 4]
    first = lines[0]["norms"]
    assert set(first) == {n.rsplit(".", 1)[0] for n, _ in deep.named_parameters()}
    # with 12 sigmoid layers the first layer's gradient is far smaller than the last's
    layers = list(first)
    assert first[layers[0]] < 1e-3 * first[layers[-1]]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert layers[0] in summary["gradients"]["vanishing"]


def test_nan_loss_stops_at_once_naming_step_and_layer(tmp_path):
    x, y = data()
    x[70] = float("nan")  # a corrupt sample in the data

    torch.manual_seed(0)
    model = create_model("mlp", input_shape=(1, 6, 6), num_classes=3, dropout=0.0)
    trainer = Trainer(model, {"epochs": 5, "progress": "none", "batch_size": 40}, run_dir=tmp_path)
    with pytest.raises(TrainingError) as e:
        trainer.fit((x, y))
    msg = str(e.value)
    assert "step" in msg and "input batch" in msg  # the cause is named: the data, not a layer
    assert not (tmp_path / "checkpoints" / "last.safetensors").exists() or "kept" in msg


def test_exploding_gradients_are_flagged_and_divergence_names_a_layer(tmp_path):
    x, y = data()
    torch.manual_seed(0)
    model = create_model("mlp", input_shape=(1, 6, 6), num_classes=3, hidden=[64, 64], dropout=0.0)
    trainer = Trainer(model, {"epochs": 20, "progress": "none", "log_gradients": 1, "precision": "fp32",
                              "optimizer": {"name": "sgd", "lr": 1e4, "momentum": 0.9}}, run_dir=tmp_path)
    with pytest.raises(TrainingError) as e:
        trainer.fit((x * 100, y))
    assert "layer" in str(e.value) and "step" in str(e.value)
    assert trainer.gradients.exploding  # flagged before the loss went non-finite


def test_divergence_keeps_the_last_good_checkpoint(tmp_path):
    from safetensors import safe_open

    from deepworks import Callback

    x, y = data()

    class CorruptAfterEpochOne(Callback):
        def on_epoch_end(self, trainer, epoch, logs):
            if epoch == 1:
                x[5] = float("inf")  # the training tensor is used in place: epoch 2 meets a bad sample

    torch.manual_seed(0)
    model = create_model("mlp", input_shape=(1, 6, 6), num_classes=3, dropout=0.0)
    trainer = Trainer(model, {"epochs": 4, "progress": "none", "batch_size": 40}, run_dir=tmp_path,
                      callbacks=[CorruptAfterEpochOne()])
    with pytest.raises(TrainingError) as e:
        trainer.fit((x, y))
    assert "epoch 2" in str(e.value) and "kept" in str(e.value) and "input batch" in str(e.value)
    with safe_open(str(tmp_path / "checkpoints" / "last.safetensors"), "pt") as f:
        state = json.loads(f.metadata()["state"])
        weights = {k: f.get_tensor(k) for k in f.keys() if k.startswith("model.")}
    assert state["epoch"] == 1 and all(torch.isfinite(w).all() for w in weights.values())
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 1
