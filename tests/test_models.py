"""Models: every registered model builds, runs forward/backward, and CNN shapes follow the textbook."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from deepworks.errors import ConfigError, ShapeError, UnknownNameError
from deepworks.models import MODELS, create_model
from deepworks.models.gan import is_adversarial
from deepworks.models.registry import takes_sequence_input, takes_text_input
from deepworks.models.layers import ACTIVATIONS


@pytest.mark.parametrize("name", [n for n in MODELS.names() if not is_adversarial(n)])  # GANs: tests/test_gan.py
def test_every_model_trains_one_step(name, tmp_path):
    """Forward, backward and one SGD step in training mode: every weight of a new model is trainable
    and gets a finite gradient, and after the step the loss on the same batch (same dropout masks)
    goes down for one of three step sizes (the deep ResNets' batch norm on 4 samples overshoots at 0.01)."""
    torch.manual_seed(0)
    shape = (3, 32, 32) if name not in ("softmax", "mlp", "cnn") else (1, 8, 8)
    if name == "mobilenet_v2":  # at 32 px its last feature map is 1x1, and batch norm over 4 values per channel
        shape = (3, 64, 64)     # made the loss jump with the rounding (one torch thread: +0.01, +0.008, +0.1 for the
        #                         three step sizes); at 64 px (2x2) the step of 1e-2 lowers it by 0.1 at one or two threads
    if takes_sequence_input(name):
        shape = (6, 3)  # a series window: (steps, features)
    params = {"arch": "resnet10t"} if name == "timm" else {}  # any timm architecture by name
    if takes_text_input(name):  # token ids only: a pretrained text encoder's architecture (a tiny BERT's here)
        from test_text_transformer import WORDS, tiny_bert

        shape, params = (6,), {"encoder": str(tiny_bert(tmp_path / "bert")), "vocab_size": len(WORDS), "max_length": 6}
    model = create_model(name, input_shape=shape, num_classes=5, **params)
    x, y = torch.randn(4, *shape), torch.tensor([0, 1, 2, 4])
    if takes_text_input(name):
        x = torch.randint(1, params["vocab_size"], (4, *shape))
    weights = dict(model.named_parameters())
    assert weights and all(p.requires_grad for p in weights.values())  # nothing frozen in a new model
    initial = copy.deepcopy(model.state_dict())
    model.train()

    def loss_on_the_batch():
        torch.manual_seed(1)  # the same dropout and stochastic-depth masks in every pass
        logits = model(x)
        return logits, nn.functional.cross_entropy(logits, y)

    logits, loss = loss_on_the_batch()
    assert logits.shape == (4, 5)
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in weights.values())
    grads = {k: p.grad.clone() for k, p in weights.items()}
    changes = []
    for lr in (1e-2, 1e-3, 1e-4):  # the first that lowers the loss ends the search
        model.load_state_dict(initial)
        for k, p in weights.items():
            p.grad = grads[k].clone()
        torch.optim.SGD(model.parameters(), lr=lr).step()
        with torch.no_grad():
            changes.append(float(loss_on_the_batch()[1]) - float(loss))
        if changes[-1] < 0:
            break
    assert changes[-1] < 0, changes


@pytest.mark.parametrize("activation", ACTIVATIONS.names())
def test_cnn_and_mlp_take_every_activation(activation):
    for name in ("cnn", "mlp"):
        model = create_model(name, input_shape=(1, 8, 8), num_classes=3, activation=activation)
        assert torch.isfinite(model(torch.randn(2, 1, 8, 8))).all()


def _conv_out(n, k, s, padding):
    if padding == "same":
        return math.ceil(n / s)
    p = 0 if padding == "valid" else padding
    return (n + 2 * p - k) // s + 1


@pytest.mark.parametrize("size", [8, 9, 28])
@pytest.mark.parametrize("kernel", [1, 2, 3, 5])
@pytest.mark.parametrize("stride", [1, 2, 3])
@pytest.mark.parametrize("padding", ["same", "valid", 1])
def test_conv_output_size_matches_formula(size, kernel, stride, padding):
    if padding == "valid" and kernel > size:
        return
    model = create_model(
        "cnn", input_shape=(1, size, size), num_classes=2, filters=[4], kernel_size=kernel, stride=stride,
        padding=padding, pool="none", hidden=[], global_pool=False,
    )
    features = model[:-2](torch.zeros(1, 1, size, size))  # everything before Flatten + Linear
    expected = _conv_out(size, kernel, stride, padding)
    assert features.shape[-2:] == (expected, expected)


@pytest.mark.parametrize("kernel", [2, 3, 4, 5])
def test_same_padding_equals_torch_same_for_stride_one(kernel):
    ours = create_model("cnn", input_shape=(2, 9, 7), num_classes=2, filters=[3], kernel_size=kernel,
                        pool="none", batch_norm=False, dropout=0.0, hidden=[])
    conv = next(m for m in ours.modules() if isinstance(m, nn.Conv2d))
    oracle = nn.Conv2d(2, 3, kernel, padding="same")
    oracle.load_state_dict(conv.state_dict())
    x = torch.randn(2, 2, 9, 7)
    pad_and_conv = ours[: [i for i, m in enumerate(ours) if isinstance(m, nn.Conv2d)][0] + 1]
    torch.testing.assert_close(pad_and_conv(x), oracle(x))


def test_too_many_poolings_fail_before_training_naming_the_block():
    with pytest.raises(ShapeError) as e:
        create_model("cnn", input_shape=(1, 8, 8), num_classes=10, filters=[8, 8, 8, 8])
    assert "block 3" in str(e.value) and "pool" in str(e.value)


def test_per_block_settings_override_model_defaults():
    model = create_model("cnn", input_shape=(1, 28, 28), num_classes=10,
                         blocks=[{"filters": 8, "stride": 2, "pool": "none"}, {"filters": 16, "padding": "valid"}])
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [8, 16] and convs[0].stride == (2, 2)
    assert model(torch.zeros(1, 1, 28, 28)).shape == (1, 10)


def test_bad_params_and_names_are_config_errors():
    with pytest.raises(ConfigError) as e:
        create_model("cnn", input_shape=(1, 8, 8), num_classes=10, filtrs=[8])
    assert "model.filtrs" in str(e.value)
    with pytest.raises(UnknownNameError) as e:
        create_model("cnnn", input_shape=(1, 8, 8), num_classes=10)
    assert "'cnn'" in str(e.value)


def test_softmax_is_multinomial_logistic_regression():
    model = create_model("softmax", input_shape=(1, 8, 8), num_classes=10)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert len(linears) == 1 and linears[0].in_features == 64
