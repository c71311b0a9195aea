"""Learning-rate schedules by name, with an optional linear warmup in front of any of them.

A schedule wraps a ``torch.optim.lr_scheduler`` scheduler (or none, for ``constant``) and
is driven by the training loop through two calls::

    schedule = build_schedule("cosine", optimizer, steps_per_epoch=100, epochs=10, warmup_steps=50)
    for epoch in ...:
        for batch in ...:
            ...; optimizer.step(); schedule.step_batch()
        schedule.step_epoch(logs)          # logs: the epoch's metrics, e.g. logs["val_loss"]

Per-step schedules (``cosine``, ``one_cycle``, ``cyclic``, ``constant``) advance in
:meth:`Schedule.step_batch`; per-epoch ones (``step``, ``exponential``, ``plateau``) in
:meth:`Schedule.step_epoch`.

Warmup (``warmup_steps`` = W > 0)
    Optimizer step ``i`` (1-based, ``i <= W``) runs at ``i / W`` times the schedule's starting
    lr: the first step at ``lr / W`` (start factor ``1 / W``, never zero), step ``W`` at exactly
    the starting lr. The schedule then starts from its own step 0: a per-step schedule runs over
    the remaining ``epochs * steps_per_epoch - W`` steps (``cosine`` reaches ``min_lr`` at the
    end of the run, ``one_cycle`` fits its cycle into them); a per-epoch schedule ignores the
    epoch ends that come while warmup is still going on and counts epochs from the first epoch
    end after it (``plateau`` likewise only watches epochs that end after warmup).
    The "starting lr" is the lr the schedule sets up before its first step: the optimizer's lr
    for most, ``max_lr / div_factor`` for ``one_cycle``, ``base_lr`` for ``cyclic``.

Per-step schedules with an end (``cosine``, ``one_cycle``) hold their final lr (``min_lr``;
``one_cycle``: ``max_lr / div_factor / final_div_factor``) once the planned steps are done,
rather than wrapping around or raising.

:meth:`Schedule.state_dict` holds only numbers, strings, lists and dicts (it includes the
lr-related values the schedulers keep in the optimizer's param groups), so a run resumed from
it continues with exactly the lrs of the uninterrupted run, whichever of optimizer and
schedule state is loaded first.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

from deepworks.config import MONITORS
from deepworks.errors import CheckpointError, ConfigError, close_matches
from deepworks.registry import Registry

__all__ = ["SCHEDULES", "Schedule", "build_schedule"]

SCHEDULES: Registry = Registry("schedule")

# lr-related values torch schedulers keep in the optimizer's param groups
_GROUP_KEYS = ("lr", "initial_lr", "max_lr", "min_lr")


# --------------------------------------------------------------------------- params


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ConstantParams(_Params):
    pass


class StepParams(_Params):
    step_size: int = Field(10, ge=1, description="epochs between lr decays")
    gamma: float = Field(0.1, gt=0, le=1, description="lr multiplier at each decay")


class ExponentialParams(_Params):
    gamma: float = Field(0.95, gt=0, le=1, description="lr multiplier per epoch")


class CosineParams(_Params):
    min_lr: float = Field(0.0, ge=0, description="lr at the end of the run")


class OneCycleParams(_Params):
    max_lr: float | None = Field(None, gt=0, description="peak lr; default: 10x the optimizer's lr")
    pct_start: float = Field(0.3, gt=0, lt=1, description="share of the steps spent increasing the lr")
    div_factor: float = Field(25.0, gt=0, description="starting lr = max_lr / div_factor")
    final_div_factor: float = Field(1e4, gt=0, description="final lr = starting lr / final_div_factor")
    anneal_strategy: Literal["cos", "linear"] = "cos"


class CyclicParams(_Params):
    base_lr: float | None = Field(None, gt=0, description="lowest lr; default: the optimizer's lr / 10")
    max_lr: float | None = Field(None, gt=0, description="highest lr; default: the optimizer's lr")
    step_size_up: int | None = Field(None, ge=1, description="steps from base_lr to max_lr; default: 2 epochs")
    step_size_down: int | None = Field(None, ge=1, description="steps back down; default: step_size_up")
    mode: Literal["triangular", "triangular2", "exp_range"] = "triangular"
    gamma: float = Field(1.0, gt=0, le=1, description="exp_range: amplitude multiplier per step")


class PlateauParams(_Params):
    factor: float = Field(0.1, gt=0, lt=1, description="lr multiplier when the metric stalls")
    patience: int = Field(3, ge=0, description="epochs without improvement before the lr drops")
    min_lr: float = Field(0.0, ge=0)
    monitor: str = Field("val_loss", description="metric watched (without validation data: its train_ twin)")
    mode: Literal["auto", "min", "max"] = Field("auto", description="auto: min for *_loss, max otherwise")
    threshold: float = Field(1e-4, ge=0, description="smallest relative change that counts as improvement")
    cooldown: int = Field(0, ge=0, description="epochs to wait after a drop before watching again")

    @field_validator("monitor")
    @classmethod
    def _known_monitor(cls, value: str) -> str:
        if value not in MONITORS:
            hint = close_matches(value, MONITORS)
            extra = f" Did you mean {hint[0]!r}?" if hint else ""
            raise ValueError(f"unknown metric {value!r}.{extra} Choose one of: {', '.join(MONITORS)}")
        return value


# --------------------------------------------------------------------------- factories


@dataclass
class _Plan:
    """What a schedule factory returns: the torch scheduler and how to drive it."""

    scheduler: Any  # torch LRScheduler / ReduceLROnPlateau, or None
    every: Literal["step", "epoch"]
    horizon: int | None = None  # per-step schedulers: steps after which they hold their lr
    monitor: str | None = None  # plateau: the metric fed to step()


@SCHEDULES.register("constant", params=ConstantParams, description="the lr stays where it is")
def constant(optimizer, *, total_steps: int, steps_per_epoch: int, epochs: int) -> _Plan:
    return _Plan(None, "step")


@SCHEDULES.register("step", params=StepParams, description="multiply the lr by gamma every step_size epochs")
def step_decay(
    optimizer, *, total_steps: int, steps_per_epoch: int, epochs: int, step_size: int, gamma: float
) -> _Plan:
    return _Plan(torch.optim.lr_scheduler.StepLR(optimizer, step_size=step_size, gamma=gamma), "epoch")


@SCHEDULES.register("exponential", params=ExponentialParams, description="multiply the lr by gamma every epoch")
def exponential(optimizer, *, total_steps: int, steps_per_epoch: int, epochs: int, gamma: float) -> _Plan:
    return _Plan(torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=gamma), "epoch")


@SCHEDULES.register("cosine", params=CosineParams, description="cosine annealing to min_lr over the run, per step")
def cosine(optimizer, *, total_steps: int, steps_per_epoch: int, epochs: int, min_lr: float) -> _Plan:
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps, eta_min=min_lr)
    return _Plan(sched, "step", horizon=total_steps)


@SCHEDULES.register("one_cycle", params=OneCycleParams, description="1cycle policy over the run, per step")
def one_cycle(
    optimizer, *, total_steps: int, steps_per_epoch: int, epochs: int, max_lr: float | None, pct_start: float,
    div_factor: float, final_div_factor: float, anneal_strategy: str,
) -> _Plan:
    # an explicit max_lr is the first group's; other groups keep their share of it (lr_scale)
    peaks = [max_lr * g.get("lr_scale", 1.0) if max_lr is not None else 10 * float(g["lr"]) for g in optimizer.param_groups]
    # torch divides by (pct_start * total_steps - 1): keep it off exactly zero
    while float(pct_start * total_steps) - 1 == 0:
        pct_start = math.nextafter(pct_start, 1.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=peaks, total_steps=total_steps, pct_start=pct_start, div_factor=div_factor,
        final_div_factor=final_div_factor, anneal_strategy=anneal_strategy, cycle_momentum=False,
    )
    # its last defined point is step total_steps - 1 (the final lr); past it torch's formula turns back up
    return _Plan(sched, "step", horizon=total_steps - 1)


@SCHEDULES.register("cyclic", params=CyclicParams, description="cyclical lr between base_lr and max_lr, per step")
def cyclic(
    optimizer, *, total_steps: int, steps_per_epoch: int, epochs: int, base_lr: float | None, max_lr: float | None,
    step_size_up: int | None, step_size_down: int | None, mode: str, gamma: float,
) -> _Plan:
    lrs = [float(g["lr"]) for g in optimizer.param_groups]
    sched = torch.optim.lr_scheduler.CyclicLR(
        optimizer,
        base_lr=[base_lr * g.get("lr_scale", 1.0) if base_lr is not None else lr / 10
                 for lr, g in zip(lrs, optimizer.param_groups)],
        max_lr=[max_lr * g.get("lr_scale", 1.0) if max_lr is not None else lr for lr, g in zip(lrs, optimizer.param_groups)],
        step_size_up=step_size_up or 2 * steps_per_epoch,
        step_size_down=step_size_down,
        mode=mode,
        gamma=gamma,
        cycle_momentum=False,  # works with any optimizer (Adam has no `momentum`)
    )
    return _Plan(sched, "step")


@SCHEDULES.register("plateau", params=PlateauParams, description="reduce the lr when a metric stops improving")
def plateau(
    optimizer, *, total_steps: int, steps_per_epoch: int, epochs: int, factor: float, patience: int, min_lr: float,
    monitor: str, mode: str, threshold: float, cooldown: int,
) -> _Plan:
    if mode == "auto":
        mode = "min" if monitor.endswith("loss") else "max"
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode=mode, factor=factor, patience=patience, threshold=threshold, cooldown=cooldown, min_lr=min_lr,
    )
    return _Plan(sched, "epoch", monitor=monitor)


# --------------------------------------------------------------------------- the driver


class Schedule:
    """A named schedule on an optimizer, with optional linear warmup; see the module docs."""

    def __init__(self, name: str, optimizer: torch.optim.Optimizer, plan: _Plan, warmup_steps: int = 0):
        self.name = name
        self.optimizer = optimizer
        self.scheduler = plan.scheduler
        self.every = plan.every
        self.horizon = plan.horizon
        self.monitor = plan.monitor
        self.warmup_steps = int(warmup_steps)
        self.steps = 0  # optimizer steps taken (step_batch calls)
        # the lrs the schedule starts from, which warmup ramps up to
        self.target_lrs = [float(g["lr"]) for g in optimizer.param_groups]
        if self.in_warmup:
            self._set_lrs(1 / self.warmup_steps)

    # ---------------------------------------------------------------- loop hooks

    @property
    def lr(self) -> float:
        """The current lr of param group 0 (the one the next optimizer step uses)."""
        return float(self.optimizer.param_groups[0]["lr"])

    @property
    def per_epoch(self) -> bool:
        return self.every == "epoch"

    @property
    def in_warmup(self) -> bool:
        """True until ``warmup_steps`` optimizer steps have been taken."""
        return self.steps < self.warmup_steps

    def step_batch(self) -> None:
        """Call after every optimizer step."""
        self.steps += 1
        if self.steps < self.warmup_steps:
            self._set_lrs((self.steps + 1) / self.warmup_steps)
        elif self.steps == self.warmup_steps:
            self._set_lrs(1.0)  # warmup done; the schedule starts from its step 0
        elif self.every == "step" and self.scheduler is not None:
            if self.horizon is None or self.scheduler.last_epoch < self.horizon:
                self.scheduler.step()

    def step_epoch(self, logs: dict[str, Any] | None = None) -> None:
        """Call at each epoch end with the epoch's metrics (``plateau`` reads its monitor from them)."""
        if self.every != "epoch" or self.scheduler is None or self.in_warmup:
            return
        if self.monitor is None:
            self.scheduler.step()
        else:
            self.scheduler.step(self._metric(logs or {}))

    def _metric(self, logs: dict[str, Any]) -> float:
        value = logs.get(self.monitor)
        if value is None and self.monitor.startswith("val_"):  # no validation data: its train_ twin
            value = logs.get("train_" + self.monitor[len("val_"):])
        if value is None:
            have = sorted(k for k in logs if k in MONITORS)
            raise ConfigError(
                f"train.schedule.monitor: the plateau schedule watches {self.monitor!r}, which this run does "
                f"not report (it reports: {', '.join(have) or 'no metrics'}). "
                "Set train.schedule.monitor to one of those."
            )
        return float(value)

    def _set_lrs(self, factor: float) -> None:
        for group, target in zip(self.optimizer.param_groups, self.target_lrs, strict=True):
            group["lr"] = target * factor

    # ---------------------------------------------------------------- checkpoints

    def state_dict(self) -> dict[str, Any]:
        """Plain numbers/strings/lists/dicts: everything needed to continue with the same lrs."""
        return copy.deepcopy(
            {
                "name": self.name,
                "steps": self.steps,
                "warmup_steps": self.warmup_steps,
                "target_lrs": list(self.target_lrs),
                "groups": [
                    {k: float(g[k]) for k in _GROUP_KEYS if k in g} for g in self.optimizer.param_groups
                ],
                "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            }
        )

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("name") != self.name:
            raise CheckpointError(
                f"the checkpoint was written with the {state.get('name')!r} schedule, but this run uses "
                f"{self.name!r}; resume with the same train.schedule."
            )
        if len(state["groups"]) != len(self.optimizer.param_groups):
            raise CheckpointError(
                f"the checkpoint's schedule has {len(state['groups'])} parameter group(s), "
                f"the optimizer {len(self.optimizer.param_groups)}."
            )
        state = copy.deepcopy(state)
        self.steps = int(state["steps"])
        self.warmup_steps = int(state["warmup_steps"])
        self.target_lrs = [float(v) for v in state["target_lrs"]]
        for group, saved in zip(self.optimizer.param_groups, state["groups"], strict=True):
            group.update({k: float(v) for k, v in saved.items()})
        if self.scheduler is not None and state.get("scheduler") is not None:
            self.scheduler.load_state_dict(state["scheduler"])

    def __repr__(self) -> str:
        return f"Schedule({self.name!r}, every={self.every}, warmup_steps={self.warmup_steps}, lr={self.lr:.3g})"


def build_schedule(
    name: str,
    optimizer: torch.optim.Optimizer,
    *,
    steps_per_epoch: int,
    epochs: int,
    warmup_steps: int = 0,
    **params: Any,
) -> Schedule:
    """The schedule ``name`` with its validated ``params`` on ``optimizer``.

    Build it on the optimizer as configured (before any lr change); a resumed run then loads
    :meth:`Schedule.state_dict`. Unknown names raise :class:`~deepworks.errors.UnknownNameError`,
    bad params the pydantic ``ValidationError`` of the schedule's params model.
    """
    entry = SCHEDULES.entry(name, where="train.schedule.name")
    sizes = (("steps_per_epoch", steps_per_epoch, 1), ("epochs", epochs, 1), ("warmup_steps", warmup_steps, 0))
    for key, value, low in sizes:
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ValueError(f"build_schedule: {key} must be an integer >= {low}, got {value!r}")
    if entry.params is not None:
        params = entry.params.model_validate(params).model_dump()
    total = max(1, steps_per_epoch * epochs - warmup_steps)  # steps the schedule itself runs over
    plan = entry.factory(optimizer, total_steps=total, steps_per_epoch=steps_per_epoch, epochs=epochs, **params)
    return Schedule(name, optimizer, plan, warmup_steps=warmup_steps)
