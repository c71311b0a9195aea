"""Optimizers: every registered one trains, matches plain torch.optim, and validates its params."""

from __future__ import annotations

import math

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from deepworks.errors import ConfigError, UnknownNameError
from deepworks.training.optim import FUSED, OPTIMIZERS, build_optimizer


def regression(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]]) + 0.1
    return x, y


def tiny_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))


def defaults(name):
    """A config-like block of the optimizer's defaults, as the config layer dumps it (JSON types)."""
    return OPTIMIZERS.entry(name).params().model_dump(mode="json")


def train(model, opt, steps, x, y):
    losses = []
    for _ in range(steps):
        def closure():  # every torch optimizer takes one; L-BFGS needs it
            opt.zero_grad()
            value = nn.functional.mse_loss(model(x), y)
            value.backward()
            return value

        losses.append(opt.step(closure).item())
    return losses


def test_the_expected_optimizers_are_registered():
    assert {"sgd", "adam", "adamw", "rmsprop", "lbfgs"} <= set(OPTIMIZERS.names())
    assert FUSED <= set(OPTIMIZERS.names())
    for name in OPTIMIZERS.names():
        assert OPTIMIZERS.entry(name).params is not None, f"{name} has no params schema"


@pytest.mark.parametrize("name", OPTIMIZERS.names())
def test_every_optimizer_trains_from_its_defaults(name):
    x, y = regression()
    model = tiny_model()
    opt = build_optimizer(name, model.parameters(), **defaults(name))
    losses = train(model, opt, 40, x, y)
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0]
    assert all(torch.isfinite(p).all() for p in model.parameters())
    lr = opt.param_groups[0]["lr"]
    assert math.isfinite(lr) and lr > 0


@pytest.mark.parametrize("name", OPTIMIZERS.names())
def test_every_optimizer_rejects_unknown_params(name):
    with pytest.raises(ValidationError, match="extra"):
        build_optimizer(name, tiny_model().parameters(), learning_rate=0.1)
    with pytest.raises(ValidationError):
        build_optimizer(name, tiny_model().parameters(), lr=0)
    with pytest.raises(ValidationError):
        build_optimizer(name, tiny_model().parameters(), lr=-1e-3)


@pytest.mark.parametrize("name", sorted(FUSED))
def test_fused_optimizers_accept_the_fused_flag(name):
    # build_optimizer adds fused=True on CUDA; the constructor must accept it with the defaults
    # (torch also has fused CPU kernels, so this runs without a GPU)
    opt = OPTIMIZERS.get(name)(tiny_model().parameters(), fused=True, **OPTIMIZERS.entry(name).params().model_dump())
    assert opt.defaults["fused"] is True
    assert not build_optimizer(name, tiny_model().parameters(), device="cpu").defaults.get("fused")


ORACLES = [
    ("sgd", {}, torch.optim.SGD, {"lr": 0.01, "momentum": 0.9}),
    ("sgd", {"lr": 0.05, "nesterov": True, "weight_decay": 1e-3}, torch.optim.SGD,
     {"lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-3}),
    ("sgd", {"momentum": 0.5, "dampening": 0.3}, torch.optim.SGD, {"lr": 0.01, "momentum": 0.5, "dampening": 0.3}),
    ("adam", {}, torch.optim.Adam, {"lr": 1e-3}),
    ("adam", {"lr": 0.01, "weight_decay": 0.1, "amsgrad": True, "betas": [0.8, 0.99]}, torch.optim.Adam,
     {"lr": 0.01, "weight_decay": 0.1, "amsgrad": True, "betas": (0.8, 0.99)}),
    ("adamw", {}, torch.optim.AdamW, {"lr": 1e-3, "weight_decay": 0.01}),
    ("adamw", {"amsgrad": True, "eps": 1e-6}, torch.optim.AdamW, {"lr": 1e-3, "amsgrad": True, "eps": 1e-6}),
    ("rmsprop", {}, torch.optim.RMSprop, {"lr": 1e-3, "alpha": 0.99, "eps": 1e-8}),
    ("rmsprop", {"momentum": 0.9, "centered": True, "weight_decay": 1e-2}, torch.optim.RMSprop,
     {"lr": 1e-3, "eps": 1e-8, "momentum": 0.9, "centered": True, "weight_decay": 1e-2}),
]


@pytest.mark.parametrize(
    ("name", "params", "cls", "torch_kw"), [pytest.param(*o, id=f"{o[0]}-{i}") for i, o in enumerate(ORACLES)]
)
def test_optimizer_steps_equal_plain_torch(name, params, cls, torch_kw):
    x, y = regression()
    ours, theirs = tiny_model(), tiny_model()
    train(ours, build_optimizer(name, ours.parameters(), **params), 15, x, y)
    train(theirs, cls(theirs.parameters(), **torch_kw), 15, x, y)
    for a, b in zip(ours.parameters(), theirs.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_adam_weight_decay_is_coupled_l2_not_decoupled():
    x, y = regression()
    adam, adamw = tiny_model(), tiny_model()
    train(adam, build_optimizer("adam", adam.parameters(), weight_decay=0.1), 5, x, y)
    train(adamw, build_optimizer("adamw", adamw.parameters(), weight_decay=0.1), 5, x, y)
    assert not torch.equal(adam[0].weight, adamw[0].weight)
    assert isinstance(build_optimizer("adam", tiny_model().parameters()), torch.optim.Adam)


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("sgd", {"momentum": 1.5}),
        ("sgd", {"momentum": -0.1}),
        ("sgd", {"dampening": 2}),
        ("sgd", {"weight_decay": -1}),
        ("adam", {"betas": [1.0, 0.999]}),
        ("adam", {"betas": [0.9]}),
        ("adam", {"eps": 0}),
        ("adamw", {"weight_decay": -0.01}),
        ("adamw", {"amsgrad": "sometimes"}),
        ("rmsprop", {"alpha": 1.5}),
        ("rmsprop", {"momentum": 1.0}),
        ("rmsprop", {"centered": "maybe"}),
    ],
)
def test_bad_params_are_rejected(name, params):
    with pytest.raises(ValidationError):
        build_optimizer(name, tiny_model().parameters(), **params)


def test_nesterov_needs_momentum_and_no_dampening():
    with pytest.raises(ConfigError, match=r"train\.optimizer\.nesterov"):
        build_optimizer("sgd", tiny_model().parameters(), nesterov=True, momentum=0)
    with pytest.raises(ConfigError, match=r"train\.optimizer\.dampening"):
        build_optimizer("sgd", tiny_model().parameters(), nesterov=True, dampening=0.1)


def test_unknown_optimizer_names_suggest_a_close_one():
    with pytest.raises(UnknownNameError, match="rmsprop") as info:
        build_optimizer("rmsprp", tiny_model().parameters())
    assert "train.optimizer.name" in str(info.value)
