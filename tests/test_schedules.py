"""Learning-rate schedules: contract over every registered one, oracles vs torch, warmup, exact resume."""

from __future__ import annotations

import json
import math

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from deepworks.errors import CheckpointError, ConfigError, UnknownNameError
from deepworks.runs import pack_state, unpack_state
from deepworks.training.optim import OPTIMIZERS, build_optimizer
from deepworks.training.schedules import SCHEDULES, Schedule, build_schedule

SPE = 4  # steps per epoch in the sequence tests
EPOCHS = 6
LOSSES = [1.0, 0.8, 0.8, 0.8, 0.8, 0.7, 0.7, 0.7, 0.7, 0.7]  # val_loss per epoch for plateau


def defaults(registry, name):
    """A config-like block of a component's defaults, as the config layer dumps it (JSON types)."""
    return registry.entry(name).params().model_dump(mode="json")


def sgd(lr=0.1, groups=1):
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    params = [{"params": [model.weight]}, {"params": [model.bias], "lr": lr / 2}] if groups == 2 else model.parameters()
    return torch.optim.SGD(params, lr=lr)


def drive(schedule, opt, start, stop, spe=SPE, losses=LOSSES):
    """lrs used by optimizer steps start+1..stop, with the epoch ends a trainer would make."""
    lrs = []
    for step in range(start, stop):
        lrs.append([g["lr"] for g in opt.param_groups])
        opt.step()
        schedule.step_batch()
        if (step + 1) % spe == 0:
            epoch = ((step + 1) // spe - 1) % len(losses)
            schedule.step_epoch({"val_loss": losses[epoch], "train_loss": losses[epoch], "val_accuracy": 0.5})
    return lrs


def torch_lrs(opt, scheduler, steps):
    lrs = []
    for _ in range(steps):
        lrs.append([g["lr"] for g in opt.param_groups])
        opt.step()
        scheduler.step()
    return lrs


def test_the_expected_schedules_are_registered():
    expected = {"constant", "step", "exponential", "cosine", "one_cycle", "cyclic", "plateau"}
    assert expected <= set(SCHEDULES.names())
    for name in SCHEDULES.names():
        assert SCHEDULES.entry(name).params is not None, f"{name} has no params schema"


# --------------------------------------------------------------------------- contract


@pytest.mark.parametrize("warmup", [0, 3])
@pytest.mark.parametrize("opt_name", OPTIMIZERS.names())
@pytest.mark.parametrize("name", SCHEDULES.names())
def test_every_schedule_trains_with_every_optimizer(name, opt_name, warmup):
    g = torch.Generator().manual_seed(0)
    x = 0.3 * torch.randn(32, 4, generator=g)  # gentle curvature: stable even at one_cycle's 10x peak lr
    y = x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]])
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    opt = build_optimizer(opt_name, model.parameters(), **defaults(OPTIMIZERS, opt_name))
    schedule = build_schedule(
        name, opt, steps_per_epoch=5, epochs=3, warmup_steps=warmup, **defaults(SCHEDULES, name)
    )
    assert isinstance(schedule, Schedule)
    losses, lrs = [], []
    for epoch in range(2):
        for _ in range(5):
            def closure():  # every torch optimizer takes one; L-BFGS needs it
                opt.zero_grad()
                value = nn.functional.mse_loss(model(x), y)
                value.backward()
                return value

            loss = opt.step(closure)
            schedule.step_batch()
            losses.append(loss.item())
            lrs.append(schedule.lr)
        schedule.step_epoch({"val_loss": losses[-1], "train_loss": losses[-1], "val_accuracy": 0.5})
        lrs.append(schedule.lr)
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0]
    assert all(math.isfinite(lr) and lr > 0 for lr in lrs)
    assert schedule.lr == opt.param_groups[0]["lr"]
    assert all(torch.isfinite(p).all() for p in model.parameters())
    # checkpointable: plain JSON once packed, no functions
    tensors = {}
    packed = pack_state(schedule.state_dict(), tensors, "schedule")
    assert json.loads(json.dumps(packed)) == packed


@pytest.mark.parametrize("name", SCHEDULES.names())
def test_every_schedule_rejects_unknown_params(name):
    with pytest.raises(ValidationError, match="extra"):
        build_schedule(name, sgd(), steps_per_epoch=2, epochs=2, no_such_param=1)


# --------------------------------------------------------------------------- oracles


def test_constant_keeps_the_lr():
    opt = sgd(0.3, groups=2)
    lrs = drive(build_schedule("constant", opt, steps_per_epoch=SPE, epochs=EPOCHS), opt, 0, SPE * EPOCHS)
    assert lrs == [[0.3, 0.15]] * (SPE * EPOCHS)


def test_cosine_equals_torch_cosine_annealing_over_the_run():
    total = SPE * EPOCHS
    opt = sgd(groups=2)
    ours = drive(build_schedule("cosine", opt, steps_per_epoch=SPE, epochs=EPOCHS, min_lr=0.001), opt, 0, total)
    ref = sgd(groups=2)
    theirs = torch_lrs(ref, torch.optim.lr_scheduler.CosineAnnealingLR(ref, T_max=total, eta_min=0.001), total)
    assert ours == theirs
    assert ours[0] == [0.1, 0.05]


def test_cosine_holds_min_lr_after_the_planned_steps():
    opt = sgd()
    schedule = build_schedule("cosine", opt, steps_per_epoch=2, epochs=2, min_lr=0.01)
    drive(schedule, opt, 0, 4, spe=2)
    assert schedule.lr == pytest.approx(0.01)
    drive(schedule, opt, 4, 10, spe=2)
    assert schedule.lr == pytest.approx(0.01)


def test_step_equals_steplr_stepped_per_epoch():
    opt = sgd(groups=2)
    ours = drive(build_schedule("step", opt, steps_per_epoch=SPE, epochs=EPOCHS, step_size=2, gamma=0.5), opt, 0,
                 SPE * EPOCHS)
    ref = sgd(groups=2)
    sched = torch.optim.lr_scheduler.StepLR(ref, step_size=2, gamma=0.5)
    theirs = []
    for _ in range(EPOCHS):
        theirs += torch_lrs(ref, type("NoStep", (), {"step": lambda self: None})(), SPE)
        sched.step()
    assert ours == theirs
    assert [row[0] for row in ours[::SPE]] == [0.1, 0.1, 0.05, 0.05, 0.025, 0.025]


def test_exponential_equals_exponentiallr_stepped_per_epoch():
    opt = sgd()
    schedule = build_schedule("exponential", opt, steps_per_epoch=SPE, epochs=EPOCHS, gamma=0.9)
    ours = [row[0] for row in drive(schedule, opt, 0, SPE * EPOCHS)[::SPE]]
    ref = sgd()
    sched = torch.optim.lr_scheduler.ExponentialLR(ref, gamma=0.9)
    theirs = []
    for _ in range(EPOCHS):
        theirs.append(ref.param_groups[0]["lr"])
        ref.step()
        sched.step()
    assert ours == theirs


def test_one_cycle_equals_torch_and_peaks_at_max_lr():
    total = 20
    opt = sgd(0.1)
    schedule = build_schedule("one_cycle", opt, steps_per_epoch=5, epochs=4, pct_start=0.25)
    ours = [row[0] for row in drive(schedule, opt, 0, total, spe=5)]
    ref = sgd(0.1)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        ref, max_lr=1.0, total_steps=total, pct_start=0.25, cycle_momentum=False
    )
    theirs = [row[0] for row in torch_lrs(ref, sched, total)]
    assert ours == theirs
    assert max(ours) == pytest.approx(1.0)  # max_lr defaults to 10x the optimizer's lr
    assert ours.index(max(ours)) == 4  # pct_start * total - 1
    assert ours[0] == pytest.approx(1.0 / 25)
    assert ours[-1] == pytest.approx(1.0 / 25 / 1e4)
    # stepping past the planned steps holds the final lr instead of raising
    drive(schedule, opt, total, total + 5, spe=5)
    assert schedule.lr == pytest.approx(1.0 / 25 / 1e4)


def test_one_cycle_explicit_max_lr_and_degenerate_phase_length():
    opt = sgd(0.1)
    schedule = build_schedule("one_cycle", opt, steps_per_epoch=5, epochs=2, max_lr=0.5, pct_start=0.3)
    assert max(row[0] for row in drive(schedule, opt, 0, 10, spe=5)) == pytest.approx(0.5, rel=0.05)
    # pct_start * total_steps == 1 divides by zero in torch's formula; it must not here
    opt = sgd(0.1)
    schedule = build_schedule("one_cycle", opt, steps_per_epoch=10, epochs=1, pct_start=0.1)
    lrs = [row[0] for row in drive(schedule, opt, 0, 10, spe=10)]
    assert all(math.isfinite(v) and v > 0 for v in lrs)


@pytest.mark.parametrize("mode", ["triangular", "triangular2", "exp_range"])
def test_cyclic_equals_torch_cycliclr(mode):
    total = 3 * 2 * 2 * SPE  # three full cycles of 2 x (2 epochs)
    opt = sgd(0.1)
    ours = drive(build_schedule("cyclic", opt, steps_per_epoch=SPE, epochs=EPOCHS * 2, mode=mode, gamma=0.99), opt, 0,
                 total)
    ref = sgd(0.1)
    sched = torch.optim.lr_scheduler.CyclicLR(
        ref, base_lr=0.01, max_lr=0.1, step_size_up=2 * SPE, mode=mode, gamma=0.99, cycle_momentum=False
    )
    assert ours == torch_lrs(ref, sched, total)
    assert ours[0][0] == pytest.approx(0.01)
    assert ours[2 * SPE][0] == pytest.approx(0.1 if mode != "exp_range" else 0.01 + 0.09 * 0.99 ** (2 * SPE))


def test_cyclic_works_with_adam():
    opt = build_optimizer("adam", nn.Linear(2, 1).parameters(), lr=0.01)
    schedule = build_schedule("cyclic", opt, steps_per_epoch=2, epochs=2, base_lr=0.001, max_lr=0.01, step_size_up=2)
    assert [row[0] for row in drive(schedule, opt, 0, 4, spe=2)] == pytest.approx([0.001, 0.0055, 0.01, 0.0055])


def test_plateau_reduces_after_patience_epochs_without_improvement():
    opt = sgd(0.1)
    schedule = build_schedule("plateau", opt, steps_per_epoch=1, epochs=10, patience=2, factor=0.5)
    seen = []
    for loss in [1.0, 0.9, 0.9, 0.9, 0.95, 0.8, 0.8, 0.8]:
        opt.step()
        schedule.step_batch()
        schedule.step_epoch({"val_loss": loss})
        seen.append(schedule.lr)
    # epochs 3, 4 stall (within patience); the 3rd stalled epoch (index 4) halves the lr
    assert seen == pytest.approx([0.1, 0.1, 0.1, 0.1, 0.05, 0.05, 0.05, 0.05])


def test_plateau_mode_follows_the_monitor_and_respects_min_lr():
    opt = sgd(0.1)
    schedule = build_schedule("plateau", opt, steps_per_epoch=1, epochs=10, monitor="val_accuracy", patience=0,
                              factor=0.1, min_lr=0.005)
    for acc in [0.5, 0.6, 0.7]:  # rising accuracy is improvement
        schedule.step_epoch({"val_accuracy": acc, "val_loss": 9.0})
    assert schedule.lr == 0.1
    for acc in [0.6, 0.6, 0.6]:
        schedule.step_epoch({"val_accuracy": acc})
    assert schedule.lr == pytest.approx(0.005)


def test_plateau_without_validation_watches_the_train_twin_else_says_what_is_missing():
    opt = sgd(0.1)
    schedule = build_schedule("plateau", opt, steps_per_epoch=1, epochs=5, patience=0)
    schedule.step_epoch({"train_loss": 1.0})
    schedule.step_epoch({"train_loss": 1.0})
    assert schedule.lr == pytest.approx(0.01)
    with pytest.raises(ConfigError, match=r"train\.schedule\.monitor.*val_loss"):
        schedule.step_epoch({"epoch": 3, "lr": 0.01})


# --------------------------------------------------------------------------- warmup


@pytest.mark.parametrize("name", SCHEDULES.names())
def test_warmup_rises_linearly_to_the_schedules_starting_lr(name):
    warmup = 5
    opt = sgd(0.1, groups=2)
    plain = build_schedule(name, sgd(0.1, groups=2), steps_per_epoch=SPE, epochs=EPOCHS)  # no warmup
    start = [g["lr"] for g in plain.optimizer.param_groups]
    schedule = build_schedule(name, opt, steps_per_epoch=SPE, epochs=EPOCHS, warmup_steps=warmup)
    lrs = drive(schedule, opt, 0, warmup + 1)
    for i in range(1, warmup + 1):  # optimizer step i runs at i / warmup of the starting lr
        assert lrs[i - 1] == pytest.approx([s * i / warmup for s in start], rel=1e-12)
    assert lrs[warmup - 1] == start  # exactly the starting lr at step `warmup`
    assert lrs[warmup] == start  # ... where the schedule then starts from its step 0
    # the same ramp as torch's LinearLR
    ref = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=start[0])
    linear = torch.optim.lr_scheduler.LinearLR(ref, start_factor=1 / warmup, end_factor=1.0, total_iters=warmup - 1)
    assert [row[0] for row in lrs[:warmup]] == pytest.approx([row[0] for row in torch_lrs(ref, linear, warmup)])


def test_cosine_after_warmup_runs_over_the_remaining_steps():
    warmup, total = 6, SPE * EPOCHS
    opt = sgd(groups=2)
    ours = drive(build_schedule("cosine", opt, steps_per_epoch=SPE, epochs=EPOCHS, warmup_steps=warmup), opt, 0, total)
    ref = sgd(groups=2)
    theirs = torch_lrs(ref, torch.optim.lr_scheduler.CosineAnnealingLR(ref, T_max=total - warmup), total - warmup)
    assert ours[warmup:] == theirs


def test_per_epoch_schedules_count_epochs_from_the_end_of_warmup():
    # warmup of 6 steps with 4 steps per epoch: the end of epoch 1 is inside warmup and is ignored
    opt = sgd(0.1)
    schedule = build_schedule("step", opt, steps_per_epoch=SPE, epochs=EPOCHS, warmup_steps=6, step_size=1, gamma=0.5)
    per_epoch = [row[0] for row in drive(schedule, opt, 0, SPE * EPOCHS)[::SPE]]
    assert per_epoch == pytest.approx([0.1 / 6, 0.1 * 5 / 6, 0.05, 0.025, 0.0125, 0.00625])
    # plateau does not watch epochs that end during warmup
    opt = sgd(0.1)
    schedule = build_schedule("plateau", opt, steps_per_epoch=1, epochs=10, warmup_steps=3, patience=0)
    for _ in range(2):
        opt.step()
        schedule.step_batch()
        schedule.step_epoch({"val_loss": 1.0})
    assert schedule.in_warmup and schedule.scheduler.num_bad_epochs == 0
    assert schedule.lr == pytest.approx(0.1)  # step 3 runs at the full lr


def test_warmup_longer_than_the_run_is_harmless():
    opt = sgd(0.1)
    schedule = build_schedule("one_cycle", opt, steps_per_epoch=2, epochs=1, warmup_steps=10)
    lrs = [row[0] for row in drive(schedule, opt, 0, 12, spe=2)]
    assert all(math.isfinite(v) and v > 0 for v in lrs)


# --------------------------------------------------------------------------- resume


def checkpoint_round_trip(state):
    tensors = {}
    packed = json.loads(json.dumps(pack_state(state, tensors, "schedule")))
    return unpack_state(packed, tensors)


@pytest.mark.parametrize("order", ["optimizer_first", "schedule_first", "schedule_only", "built_after_optimizer"])
@pytest.mark.parametrize(("warmup", "split"), [(0, 7), (6, 3), (6, 6), (6, 13)])
@pytest.mark.parametrize("name", SCHEDULES.names())
def test_state_dict_round_trip_continues_with_identical_lrs(name, warmup, split, order):
    total = SPE * EPOCHS
    kw = {"steps_per_epoch": SPE, "epochs": EPOCHS, "warmup_steps": warmup}
    kw.update({"plateau": {"patience": 1}, "step": {"step_size": 2}}.get(name, {}))
    opt = sgd(0.1, groups=2)
    reference = drive(build_schedule(name, opt, **kw), opt, 0, total)

    opt = sgd(0.1, groups=2)
    first = build_schedule(name, opt, **kw)
    head = drive(first, opt, 0, split)
    sched_state = checkpoint_round_trip(first.state_dict())
    opt_state = checkpoint_round_trip(opt.state_dict())
    drive(first, opt, split, total)  # the saved state must not change with the run that goes on

    fresh = sgd(0.1, groups=2)
    if order == "built_after_optimizer":
        fresh.load_state_dict(opt_state)
        second = build_schedule(name, fresh, **kw)
        second.load_state_dict(sched_state)
    else:
        second = build_schedule(name, fresh, **kw)
        if order == "optimizer_first":
            fresh.load_state_dict(opt_state)
        second.load_state_dict(sched_state)
        if order == "schedule_first":
            fresh.load_state_dict(opt_state)
    assert head + drive(second, fresh, split, total) == reference
    if name != "constant" and warmup == 0:
        assert len({row[0] for row in reference}) > 1  # the test would catch a wrong resume


def test_loading_another_schedules_state_is_refused():
    state = build_schedule("cosine", sgd(), steps_per_epoch=2, epochs=2).state_dict()
    with pytest.raises(CheckpointError, match="cosine"):
        build_schedule("step", sgd(), steps_per_epoch=2, epochs=2).load_state_dict(state)


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("constant", {"gamma": 0.5}),
        ("step", {"step_size": 0}),
        ("step", {"step_size": 2.5}),
        ("step", {"gamma": 0}),
        ("exponential", {"gamma": 1.5}),
        ("cosine", {"min_lr": -0.1}),
        ("one_cycle", {"pct_start": 1.0}),
        ("one_cycle", {"max_lr": 0}),
        ("one_cycle", {"div_factor": -1}),
        ("cyclic", {"mode": "sawtooth"}),
        ("cyclic", {"step_size_up": 0}),
        ("plateau", {"factor": 1.0}),
        ("plateau", {"patience": -1}),
        ("plateau", {"monitor": "val_los"}),
        ("plateau", {"mode": "up"}),
    ],
)
def test_bad_params_are_rejected(name, params):
    with pytest.raises(ValidationError):
        build_schedule(name, sgd(), steps_per_epoch=2, epochs=2, **params)


def test_plateau_monitor_error_suggests_the_close_name():
    with pytest.raises(ValidationError, match="val_loss"):
        build_schedule("plateau", sgd(), steps_per_epoch=2, epochs=2, monitor="val_los")


def test_unknown_schedule_names_are_reported_with_the_key_path():
    with pytest.raises(UnknownNameError, match="cosine") as info:
        build_schedule("cosin", sgd(), steps_per_epoch=2, epochs=2)
    assert "train.schedule.name" in str(info.value)


@pytest.mark.parametrize("kw", [{"steps_per_epoch": 0, "epochs": 2}, {"steps_per_epoch": 2, "epochs": 0},
                                {"steps_per_epoch": 2, "epochs": 2, "warmup_steps": -1}])
def test_bad_loop_sizes_are_rejected(kw):
    with pytest.raises(ValueError):
        build_schedule("constant", sgd(), **kw)
