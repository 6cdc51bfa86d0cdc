"""Learning-rate schedules (``--lr_scheduler``) as a resumable :class:`torch.optim.lr_scheduler.LambdaLR`.

Every schedule is a factor of each parameter group's base learning rate, per optimizer step:

* warm-up: linear from 0 over ``--lr_warmup_steps`` (step 0 trains with lr 0, as in transformers);
* ``constant`` (no warm-up allowed) and ``constant_with_warmup``: 1 after warm-up;
* ``linear``, ``cosine`` (half a cosine), ``cosine_with_restarts`` (``--lr_scheduler_num_cycles`` cosines,
  each restarting at 1) and ``polynomial`` (``(1 - progress) ** --lr_scheduler_power``) decay from 1 to
  ``--lr_scheduler_min_lr_ratio`` (default 0) over the steps after warm-up, or, when ``--lr_decay_steps``
  is given, hold 1 and decay over the last ``lr_decay_steps`` steps only (warm-up, stable, decay).

``--lr_warmup_steps`` and ``--lr_decay_steps`` are a step count, or a fraction of the total steps when
below 1. Without ``min_lr_ratio`` and decay steps the curves equal transformers' schedules of the same
names (its ``polynomial`` with ``lr_end=0``).

The schedule is a small picklable object holding only numbers; LambdaLR saves its fields in
``state_dict()`` and restores them with ``load_state_dict()``, so a resumed run continues the same curve.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import attrs
import torch
from torch.optim.lr_scheduler import LambdaLR, LRScheduler

from tuner_core.config.train_options import LR_SCHEDULERS, TrainOptions
from tuner_core.errors import ConfigError, NotAvailableError
from tuner_core.training.optimizers import uses_relative_step

logger = logging.getLogger(__name__)

DECAYING_SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial")


def resolve_step_count(value: float, total_steps: int, *, option: str) -> int:
    """Steps meant by ``value``: a whole count, or a fraction of ``total_steps`` when below 1."""
    if value < 0:
        raise ConfigError(f"{option} must be >= 0, got {value}")
    if value < 1:
        return int(value * total_steps)
    if value != int(value):
        raise ConfigError(f"{option} must be a whole number of steps or a fraction below 1, got {value}")
    return int(value)


# No slots: LambdaLR saves and restores the schedule through its __dict__.
@attrs.define(kw_only=True, slots=False)
class LrCurve:
    """The learning-rate factor at each optimizer step (the ``lr_lambda`` of :class:`LambdaLR`).

    :param name: one of :data:`LR_SCHEDULERS`.
    :param total_steps: optimizer steps the schedule spans.
    :param warmup_steps: linear warm-up from 0.
    :param decay_steps: decay only over the last this many steps (0: over everything after warm-up).
    :param num_cycles: cosines of ``cosine_with_restarts``.
    :param power: exponent of ``polynomial``.
    :param min_lr_ratio: factor the decaying schedules end at.
    """

    name: str
    total_steps: int
    warmup_steps: int = 0
    decay_steps: int = 0
    num_cycles: int = 1
    power: float = 1.0
    min_lr_ratio: float = 0.0

    def __call__(self, step: int) -> float:
        """The factor at 0-based optimizer step ``step``."""
        if step < self.warmup_steps:
            return step / self.warmup_steps
        if self.name not in DECAYING_SCHEDULERS:
            return 1.0
        decay_start = self.total_steps - self.decay_steps if self.decay_steps > 0 else self.warmup_steps
        if step < decay_start:
            return 1.0
        progress = min(1.0, (step - decay_start) / max(1, self.total_steps - decay_start))
        if self.name == "linear":
            factor = 1.0 - progress
        elif self.name == "cosine":
            factor = 0.5 * (1.0 + math.cos(math.pi * progress))
        elif self.name == "cosine_with_restarts":
            factor = (
                0.0
                if progress >= 1.0
                else 0.5 * (1.0 + math.cos(math.pi * ((self.num_cycles * progress) % 1.0)))
            )
        else:  # polynomial
            factor = (1.0 - progress) ** self.power
        return self.min_lr_ratio + (1.0 - self.min_lr_ratio) * factor

    def describe(self) -> str:
        """The schedule as a sentence for the log, e.g. ``cosine over 100 steps, 10 warm-up steps``."""
        parts = [f"{self.name} over {self.total_steps} steps"]
        if self.warmup_steps:
            parts.append(f"{self.warmup_steps} warm-up steps")
        if self.name in DECAYING_SCHEDULERS:
            if self.decay_steps:
                parts.append(f"decaying over the last {self.decay_steps} steps")
            if self.name == "cosine_with_restarts":
                parts.append(f"{self.num_cycles} cycles")
            if self.name == "polynomial":
                parts.append(f"power {self.power:g}")
            if self.min_lr_ratio:
                parts.append(f"down to {self.min_lr_ratio:g} x the learning rate")
        return ", ".join(parts)


def build_lr_curve(
    *,
    lr_scheduler: str = "constant",
    num_training_steps: int,
    lr_warmup_steps: float = 0,
    lr_decay_steps: float = 0,
    lr_scheduler_num_cycles: int = 1,
    lr_scheduler_power: float = 1.0,
    lr_scheduler_min_lr_ratio: float | None = None,
) -> LrCurve:
    """Check the scheduler options and resolve them into an :class:`LrCurve`.

    :raises ConfigError: naming the option that cannot apply.
    """
    if lr_scheduler not in LR_SCHEDULERS:
        raise ConfigError(f"--lr_scheduler must be one of {', '.join(LR_SCHEDULERS)}; got {lr_scheduler!r}")
    if num_training_steps < 1:
        raise ConfigError(f"the schedule needs at least one training step, got {num_training_steps}")
    warmup = resolve_step_count(lr_warmup_steps, num_training_steps, option="--lr_warmup_steps")
    decay = resolve_step_count(lr_decay_steps, num_training_steps, option="--lr_decay_steps")
    if lr_scheduler == "constant" and warmup:
        raise ConfigError(
            "--lr_scheduler constant has no warm-up; use constant_with_warmup with --lr_warmup_steps"
        )
    if lr_scheduler not in DECAYING_SCHEDULERS and decay:
        raise ConfigError(
            f"--lr_decay_steps needs a decaying --lr_scheduler ({', '.join(DECAYING_SCHEDULERS)}), "
            f"not {lr_scheduler}"
        )
    if warmup + decay > num_training_steps:
        raise ConfigError(
            f"--lr_warmup_steps ({warmup}) plus --lr_decay_steps ({decay}) exceed the {num_training_steps} "
            "training steps"
        )
    if lr_scheduler_num_cycles < 1 or lr_scheduler_num_cycles != int(lr_scheduler_num_cycles):
        raise ConfigError(
            f"--lr_scheduler_num_cycles must be a whole number >= 1, got {lr_scheduler_num_cycles}"
        )
    if lr_scheduler == "polynomial" and lr_scheduler_power <= 0:
        raise ConfigError(f"--lr_scheduler_power must be > 0, got {lr_scheduler_power}")
    min_lr_ratio = 0.0 if lr_scheduler_min_lr_ratio is None else float(lr_scheduler_min_lr_ratio)
    if not 0.0 <= min_lr_ratio <= 1.0:
        raise ConfigError(f"--lr_scheduler_min_lr_ratio must be within 0..1, got {min_lr_ratio}")
    return LrCurve(
        name=lr_scheduler,
        total_steps=int(num_training_steps),
        warmup_steps=warmup,
        decay_steps=decay,
        num_cycles=int(lr_scheduler_num_cycles),
        power=float(lr_scheduler_power),
        min_lr_ratio=min_lr_ratio,
    )


#: Stands for the step count while it is unknown (``--max_train_epochs`` before the data is counted):
#: large enough that no warm-up or decay exceeds it, so only the checks that need no count can fail.
_UNKNOWN_STEPS = 10**9


def _schedule_options(options: TrainOptions) -> dict[str, Any]:
    """The ``--lr_*`` options as :func:`build_lr_curve` takes them."""
    return {
        "lr_scheduler": options.lr_scheduler,
        "lr_warmup_steps": options.lr_warmup_steps,
        "lr_decay_steps": options.lr_decay_steps,
        "lr_scheduler_num_cycles": options.lr_scheduler_num_cycles,
        "lr_scheduler_power": options.lr_scheduler_power,
        "lr_scheduler_min_lr_ratio": options.lr_scheduler_min_lr_ratio,
    }


def check_lr_options(options: TrainOptions, total_steps: int | None) -> None:
    """Check the schedule options of a run of ``total_steps`` steps (``None``: not known yet).

    :raises ConfigError: naming the option that cannot apply.
    """
    build_lr_curve(num_training_steps=total_steps or _UNKNOWN_STEPS, **_schedule_options(options))


def ignored_lr_options(options: TrainOptions) -> list[str]:
    """Schedule options that take no effect with the others given (said once, in pre-flight)."""
    if options.lr_scheduler_min_lr_ratio is not None and options.lr_scheduler not in DECAYING_SCHEDULERS:
        return [
            f"--lr_scheduler_min_lr_ratio is ignored: --lr_scheduler {options.lr_scheduler} does not decay"
        ]
    return []


def lr_scheduler_for(
    optimizer: torch.optim.Optimizer, options: TrainOptions, total_steps: int
) -> LRScheduler:
    """:func:`build_lr_scheduler` with a run's ``--lr_*`` options over ``total_steps`` steps."""
    return build_lr_scheduler(
        optimizer,
        num_training_steps=total_steps,
        learning_rate=options.learning_rate,
        **_schedule_options(options),
    )


def build_lr_scheduler(
    optimizer: torch.optim.Optimizer,
    *,
    lr_scheduler: str = "constant",
    num_training_steps: int,
    lr_warmup_steps: float = 0,
    lr_decay_steps: float = 0,
    lr_scheduler_num_cycles: int = 1,
    lr_scheduler_power: float = 1.0,
    lr_scheduler_min_lr_ratio: float | None = None,
    learning_rate: float = 0.0,
) -> LRScheduler:
    """The scheduler for ``optimizer``; call its ``step()`` once per optimizer step.

    ``num_training_steps`` is the number of scheduler steps the run takes. (Under accelerate with N
    processes a prepared scheduler steps N times per optimizer step unless prepared with
    ``step_scheduler_with_optimizer=False``; pass the count that matches how it is stepped.)

    An Adafactor computing its own step size (``relative_step=True``) gets transformers' proxy schedule,
    which only reports Adafactor's rate (``learning_rate`` before the first step); there any warm-up,
    decay or non-constant ``lr_scheduler`` is a :class:`ConfigError`, because it could not take effect.
    """
    if uses_relative_step(optimizer):
        return _adafactor_schedule(optimizer, lr_scheduler, lr_warmup_steps, lr_decay_steps, learning_rate)
    curve = build_lr_curve(
        lr_scheduler=lr_scheduler,
        num_training_steps=num_training_steps,
        lr_warmup_steps=lr_warmup_steps,
        lr_decay_steps=lr_decay_steps,
        lr_scheduler_num_cycles=lr_scheduler_num_cycles,
        lr_scheduler_power=lr_scheduler_power,
        lr_scheduler_min_lr_ratio=lr_scheduler_min_lr_ratio,
    )
    logger.info("lr schedule: %s", curve.describe())
    return LambdaLR(optimizer, lr_lambda=curve)


def _adafactor_schedule(
    optimizer: torch.optim.Optimizer,
    lr_scheduler: str,
    lr_warmup_steps: float,
    lr_decay_steps: float,
    learning_rate: float,
) -> LRScheduler:
    if lr_scheduler != "constant" or lr_warmup_steps or lr_decay_steps:
        raise ConfigError(
            "AdaFactor with relative_step=True sets its own learning rate, so --lr_scheduler "
            f"{lr_scheduler} / --lr_warmup_steps / --lr_decay_steps cannot apply. Leave them at their "
            "defaults (use --optimizer_args warmup_init=True for Adafactor's own warm-up), or pass "
            "--optimizer_args relative_step=False scale_parameter=False to use them"
        )
    try:
        from transformers.optimization import AdafactorSchedule
    except ImportError as error:
        raise NotAvailableError(
            "AdaFactor needs the transformers package: pip install transformers"
        ) from error
    return AdafactorSchedule(optimizer, initial_lr=learning_rate)
