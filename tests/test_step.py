"""training/step.py against hand-written PyTorch: one step of each kind gives the same loss, logits and
weights as the plain loop (zero_grad, forward, loss, backward, clip, step), bit for bit where the
arithmetic is the same. Fast on purpose: the mutation check (benchmarks/mutation.py) runs these
for every mutant of step.py."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from deepworks.runtime import Precision
from deepworks.training.step import FP32, FlipAverage, eval_step, train_step, with_tta


def _model_and_batch(seed: int = 0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3))
    x = torch.randn(16, 5)
    y = torch.randint(0, 3, (16,))
    return model, x, y


def _params(model: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def _assert_same(a: list[torch.Tensor], b: list[torch.Tensor]) -> None:
    assert len(a) == len(b)
    for u, v in zip(a, b):
        assert torch.equal(u, v)


def _by_hand(model, x, y, opt, *, penalty=None, clip=None):
    """The plain PyTorch step the library's must equal."""
    opt.zero_grad()
    logits = model(x)
    loss = nn.functional.cross_entropy(logits, y)
    objective = loss + penalty() if penalty is not None else loss
    objective.backward()
    if clip is not None:
        torch.nn.utils.clip_grad_norm_(list(model.parameters()), clip)
    opt.step()
    return loss.detach(), logits.detach()


@pytest.mark.parametrize("make_opt", [
    lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9),
    lambda p: torch.optim.AdamW(p, lr=0.01),
])
def test_three_steps_equal_the_plain_loop(make_opt):
    # three steps: a missing zero_grad accumulates gradients from the step before and diverges at step 2
    model, x, y = _model_and_batch()
    twin = copy.deepcopy(model)
    opt, twin_opt = make_opt(model.parameters()), make_opt(twin.parameters())
    for _ in range(3):
        loss, logits = train_step(model, x, y, opt, nn.CrossEntropyLoss())
        ref_loss, ref_logits = _by_hand(twin, x, y, twin_opt)
        assert torch.equal(loss, ref_loss) and torch.equal(logits, ref_logits)
        assert not loss.requires_grad and not logits.requires_grad  # detached
        _assert_same(_params(model), _params(twin))


def test_penalty_moves_the_weights_but_not_the_reported_loss():
    model, x, y = _model_and_batch(1)
    twin = copy.deepcopy(model)
    opt, twin_opt = torch.optim.SGD(model.parameters(), lr=0.5), torch.optim.SGD(twin.parameters(), lr=0.5)
    plain = copy.deepcopy(model)
    plain_opt = torch.optim.SGD(plain.parameters(), lr=0.5)

    def penalty_of(m):
        return lambda: 0.3 * sum((p * p).sum() for p in m.parameters())

    loss, _ = train_step(model, x, y, opt, nn.CrossEntropyLoss(), penalty=penalty_of(model))
    ref_loss, _ = _by_hand(twin, x, y, twin_opt, penalty=penalty_of(twin))
    _by_hand(plain, x, y, plain_opt)
    assert torch.equal(loss, ref_loss)  # the data loss, without the penalty
    _assert_same(_params(model), _params(twin))
    assert not all(torch.equal(a, b) for a, b in zip(_params(model), _params(plain)))  # the penalty acted


def test_clip_and_inspect_see_raw_then_clipped_gradients():
    model, x, y = _model_and_batch(2)
    twin = copy.deepcopy(model)
    opt, twin_opt = torch.optim.SGD(model.parameters(), lr=1.0), torch.optim.SGD(twin.parameters(), lr=1.0)
    seen = []
    before = _params(model)

    def inspect():
        seen.append(torch.sqrt(sum((p.grad * p.grad).sum() for p in model.parameters())).item())

    train_step(model, x, y, opt, nn.CrossEntropyLoss(), clip_grad_norm=0.05, inspect_grads=inspect)
    _by_hand(twin, x, y, twin_opt, clip=0.05)
    _assert_same(_params(model), _params(twin))
    assert len(seen) == 1 and seen[0] > 0.05  # inspect_grads saw the raw norm, once
    step = torch.sqrt(sum(((a - b) ** 2).sum() for a, b in zip(_params(model), before)))
    assert step.item() == pytest.approx(0.05, rel=1e-4)  # SGD with lr 1 moves by the clipped gradient


def test_no_clip_when_none():
    model, x, y = _model_and_batch(3)
    twin = copy.deepcopy(model)
    opt, twin_opt = torch.optim.SGD(model.parameters(), lr=1.0), torch.optim.SGD(twin.parameters(), lr=1.0)
    train_step(model, x, y, opt, nn.CrossEntropyLoss(), clip_grad_norm=None)
    _by_hand(twin, x, y, twin_opt)
    _assert_same(_params(model), _params(twin))


def test_grad_scaler_step_equals_the_unscaled_step():
    # a power-of-two scale is exact in floating point, so the scaled step is the plain one bit for bit;
    # inspect_grads sees true (unscaled) gradients
    model, x, y = _model_and_batch(4)
    twin = copy.deepcopy(model)
    opt, twin_opt = torch.optim.SGD(model.parameters(), lr=0.1), torch.optim.SGD(twin.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=1)
    seen = []
    loss, logits = train_step(model, x, y, opt, nn.CrossEntropyLoss(), scaler=scaler, clip_grad_norm=10.0,
                              inspect_grads=lambda: seen.append([p.grad.clone() for p in model.parameters()]))
    ref_loss, ref_logits = _by_hand(twin, x, y, twin_opt, clip=10.0)
    assert torch.equal(loss, ref_loss) and torch.equal(logits, ref_logits)
    _assert_same(_params(model), _params(twin))
    _assert_same(seen[0], [p.grad for p in twin.parameters()])
    assert scaler.get_scale() == 2.0**11  # update() ran: a finite step grows the scale after growth_interval


def test_lbfgs_step_equals_torch_lbfgs_and_reports_the_starting_point():
    model, x, y = _model_and_batch(5)
    twin = copy.deepcopy(model)
    opt = torch.optim.LBFGS(model.parameters(), lr=0.5, max_iter=5)
    twin_opt = torch.optim.LBFGS(twin.parameters(), lr=0.5, max_iter=5)
    start_logits = twin(x).detach()
    start_loss = nn.functional.cross_entropy(start_logits, y)
    calls = []
    seen = []

    def closure():
        twin_opt.zero_grad()
        objective = nn.functional.cross_entropy(twin(x), y) + 0.01 * sum((p * p).sum() for p in twin.parameters())
        objective.backward()
        torch.nn.utils.clip_grad_norm_(list(twin.parameters()), 100.0)
        calls.append(1)
        return objective

    twin_opt.step(closure)
    loss, logits = train_step(model, x, y, opt, nn.CrossEntropyLoss(), clip_grad_norm=100.0,
                              penalty=lambda: 0.01 * sum((p * p).sum() for p in model.parameters()),
                              inspect_grads=lambda: seen.append(1))
    assert len(calls) > 1  # the line search re-evaluated the objective
    assert len(seen) == 1  # inspect_grads: once, at the starting point
    assert torch.equal(loss, start_loss) and torch.equal(logits, start_logits)
    assert not loss.requires_grad and not logits.requires_grad
    _assert_same(_params(model), _params(twin))


def test_lbfgs_clips_the_gradient_it_steps_with():
    model, x, y = _model_and_batch(6)
    clipped, free = copy.deepcopy(model), copy.deepcopy(model)
    for m, clip in ((clipped, 1e-3), (free, None)):
        train_step(m, x, y, torch.optim.LBFGS(m.parameters(), lr=1.0, max_iter=1), nn.CrossEntropyLoss(),
                   clip_grad_norm=clip)
    moved = torch.sqrt(sum(((a - b) ** 2).sum() for a, b in zip(_params(clipped), _params(model))))
    assert moved.item() < 1.1e-3 < torch.sqrt(sum(((a - b) ** 2).sum() for a, b in zip(_params(free), _params(model)))).item()


def test_bf16_autocast_step_computes_the_loss_in_fp32():
    model, x, y = _model_and_batch(7)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loss, logits = train_step(model, x, y, opt, nn.CrossEntropyLoss(), Precision("bf16", "cpu", channels_last=False))
    assert logits.dtype == torch.bfloat16 and loss.dtype == torch.float32
    assert torch.equal(loss, nn.functional.cross_entropy(logits.float(), y))


def test_eval_step_is_a_gradient_free_forward():
    model, x, y = _model_and_batch(8)
    before = _params(model)
    loss, logits = eval_step(model, x, y, nn.CrossEntropyLoss(reduction="sum"))
    assert torch.equal(logits, model(x).detach()) and not logits.requires_grad
    assert torch.equal(loss, nn.functional.cross_entropy(model(x).detach(), y, reduction="sum"))
    _assert_same(_params(model), before)
    loss16, logits16 = eval_step(model, x, y, nn.CrossEntropyLoss(), Precision("bf16", "cpu", channels_last=False))
    assert logits16.dtype == torch.float32 and loss16.dtype == torch.float32  # cast back after autocast
    assert FP32.dtype is None


def test_flip_average_is_the_mean_over_the_mirror_image():
    torch.manual_seed(9)
    model = nn.Sequential(nn.Flatten(), nn.Linear(2 * 3 * 4, 5))
    x = torch.randn(6, 2, 3, 4)
    expected = (model(x) + model(torch.flip(x, dims=[3]))) / 2
    tta = with_tta(model, "hflip")
    assert isinstance(tta, FlipAverage) and tta.model is model
    assert torch.allclose(tta(x), expected, atol=1e-6)
    assert not torch.allclose(tta(x), model(x), atol=1e-3)  # the model is not mirror-symmetric
    assert with_tta(model, "none") is model
