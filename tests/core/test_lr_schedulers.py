"""Learning-rate schedules: each curve at key steps, ratios, decay steps, min lr, resume, errors."""

from __future__ import annotations

import io
import math
import pickle

import pytest
import torch

from tuner_core.errors import ConfigError
from tuner_core.training.lr_schedulers import (
    LR_SCHEDULERS,
    LrCurve,
    build_lr_curve,
    build_lr_scheduler,
    resolve_step_count,
)

LR = 0.5


def make_optimizer(lr: float = LR) -> torch.optim.Optimizer:
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=lr)


def lr_sequence(scheduler: torch.optim.lr_scheduler.LRScheduler, steps: int) -> list[float]:
    """The lr used at each of ``steps`` optimizer steps."""
    seen = []
    for _ in range(steps):
        seen.append(scheduler.optimizer.param_groups[0]["lr"])
        scheduler.optimizer.step()
        scheduler.step()
    return seen


def curve(name: str, **kwargs: object) -> list[float]:
    built = build_lr_scheduler(make_optimizer(), lr_scheduler=name, num_training_steps=100, **kwargs)
    return [v / LR for v in lr_sequence(built, 101)]


def test_key_steps_of_each_curve() -> None:
    c = curve("constant")
    assert c[0] == c[50] == c[100] == 1.0
    c = curve("constant_with_warmup", lr_warmup_steps=10)
    assert (c[0], c[5], c[10], c[99]) == (0.0, 0.5, 1.0, 1.0)
    c = curve("linear", lr_warmup_steps=10)
    assert (c[0], c[5], c[10]) == (0.0, 0.5, 1.0)
    assert c[55] == pytest.approx(0.5) and c[100] == 0.0
    c = curve("cosine", lr_warmup_steps=20)
    assert c[20] == 1.0 and c[60] == pytest.approx(0.5) and c[100] == pytest.approx(0.0)
    assert c[40] == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.25)))
    c = curve("cosine_with_restarts", lr_scheduler_num_cycles=2)
    assert c[0] == 1.0 and c[25] == pytest.approx(0.5) and c[49] < 0.01 and c[50] == pytest.approx(1.0)
    assert c[75] == pytest.approx(0.5) and c[100] == 0.0
    c = curve("polynomial", lr_scheduler_power=2.0)
    assert c[0] == 1.0 and c[50] == pytest.approx(0.25) and c[90] == pytest.approx(0.01) and c[100] == 0.0


@pytest.mark.parametrize(
    "name", ["linear", "cosine", "cosine_with_restarts", "polynomial", "constant_with_warmup"]
)
def test_curves_match_transformers(name: str) -> None:
    optimization = pytest.importorskip("transformers.optimization")
    extra = {"num_cycles": 3} if name == "cosine_with_restarts" else {}
    extra |= {"power": 1.7, "lr_end": 0.0} if name == "polynomial" else {}
    oracle = optimization.get_scheduler(
        name, make_optimizer(), num_warmup_steps=7, num_training_steps=60, scheduler_specific_kwargs=extra
    )
    ours = build_lr_scheduler(
        make_optimizer(),
        lr_scheduler=name,
        num_training_steps=60,
        lr_warmup_steps=7,
        lr_scheduler_num_cycles=3,
        lr_scheduler_power=1.7,
    )
    # Within the run only: past its end transformers' cosine rises again, ours stays at the floor.
    assert lr_sequence(ours, 61) == pytest.approx(lr_sequence(oracle, 61), abs=1e-12)


def test_ratio_warmup_and_decay_steps() -> None:
    assert resolve_step_count(0.1, 250, option="--lr_warmup_steps") == 25
    assert resolve_step_count(40, 250, option="--lr_warmup_steps") == 40
    assert resolve_step_count(0, 250, option="--lr_warmup_steps") == 0
    c = curve("constant_with_warmup", lr_warmup_steps=0.2)
    assert c[10] == 0.5 and c[19] == pytest.approx(0.95) and c[20] == 1.0
    # Warm-up, hold, then decay over the last 30% only.
    c = curve("linear", lr_warmup_steps=0.1, lr_decay_steps=0.3)
    assert c[5] == 0.5 and c[10] == c[40] == c[70] == 1.0
    assert c[85] == pytest.approx(0.5) and c[100] == 0.0
    c = curve("cosine", lr_decay_steps=50)
    assert c[0] == c[49] == c[50] == 1.0 and c[75] == pytest.approx(0.5)


def test_min_lr_ratio_floors_decaying_curves() -> None:
    for name in ("linear", "cosine", "cosine_with_restarts", "polynomial"):
        c = curve(name, lr_scheduler_min_lr_ratio=0.1)
        assert c[0] == 1.0 and c[100] == pytest.approx(0.1) and min(c) == pytest.approx(0.1), name
    c = curve("linear", lr_scheduler_min_lr_ratio=0.2)
    assert c[50] == pytest.approx(0.2 + 0.8 * 0.5)


def test_past_the_end_stays_at_the_floor() -> None:
    schedule = build_lr_curve(lr_scheduler="cosine", num_training_steps=10, lr_scheduler_min_lr_ratio=0.05)
    assert schedule(10) == schedule(500) == pytest.approx(0.05)


def test_each_parameter_group_scales_its_own_lr() -> None:
    a, b = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([{"params": [a]}, {"params": [b], "lr": 4.0}], lr=1.0)
    scheduler = build_lr_scheduler(optimizer, lr_scheduler="linear", num_training_steps=10)
    lr_sequence(scheduler, 5)
    assert scheduler.get_last_lr() == pytest.approx([0.5, 2.0])


@pytest.mark.parametrize("name", LR_SCHEDULERS)
def test_resume_reproduces_the_lr_sequence(name: str) -> None:
    kwargs = {"lr_scheduler": name, "num_training_steps": 40, "lr_scheduler_num_cycles": 2}
    if name != "constant":
        kwargs["lr_warmup_steps"] = 0.1
    if name in ("linear", "cosine", "cosine_with_restarts", "polynomial"):
        kwargs |= {"lr_decay_steps": 20, "lr_scheduler_min_lr_ratio": 0.1}
    uninterrupted = lr_sequence(build_lr_scheduler(make_optimizer(), **kwargs), 45)

    first = build_lr_scheduler(make_optimizer(), **kwargs)
    head = lr_sequence(first, 17)
    buffer = io.BytesIO()
    torch.save({"optimizer": first.optimizer.state_dict(), "scheduler": first.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)  # plain numbers only: loads without pickle code

    resumed = build_lr_scheduler(make_optimizer(), **kwargs)
    resumed.optimizer.load_state_dict(saved["optimizer"])
    resumed.load_state_dict(saved["scheduler"])
    assert head + lr_sequence(resumed, 28) == uninterrupted


def test_schedule_object_is_picklable() -> None:
    schedule = build_lr_curve(lr_scheduler="polynomial", num_training_steps=9, lr_scheduler_power=2.0)
    copy = pickle.loads(pickle.dumps(schedule))
    assert isinstance(copy, LrCurve) and [copy(i) for i in range(12)] == [schedule(i) for i in range(12)]


def test_adafactor_relative_step_uses_its_own_schedule() -> None:
    optimization = pytest.importorskip("transformers.optimization")
    parameter = torch.nn.Parameter(torch.ones(4))
    optimizer = optimization.Adafactor([parameter], lr=None, relative_step=True)
    scheduler = build_lr_scheduler(optimizer, num_training_steps=10, learning_rate=1e-3)
    assert isinstance(scheduler, optimization.AdafactorSchedule)
    assert scheduler.get_last_lr() == [1e-3]
    parameter.grad = torch.ones_like(parameter)
    optimizer.step()
    scheduler.step()
    assert scheduler.get_last_lr() == pytest.approx([1e-2])  # min(1e-2, 1/sqrt(1)) * RMS(ones)
    for bad in ({"lr_scheduler": "cosine"}, {"lr_warmup_steps": 5}, {"lr_decay_steps": 0.5}):
        with pytest.raises(ConfigError, match="relative_step=True sets its own learning rate"):
            build_lr_scheduler(optimizer, num_training_steps=10, **bad)


@pytest.mark.parametrize(
    ("kwargs", "option"),
    [
        ({"lr_scheduler": "exponential"}, "--lr_scheduler must be one of"),
        ({"lr_scheduler": "constant", "lr_warmup_steps": 5}, "constant_with_warmup"),
        ({"lr_scheduler": "constant_with_warmup", "lr_decay_steps": 5}, "--lr_decay_steps needs a decaying"),
        ({"lr_scheduler": "linear", "lr_warmup_steps": 60, "lr_decay_steps": 50}, "exceed the 100"),
        ({"lr_scheduler": "linear", "lr_warmup_steps": 10.5}, "--lr_warmup_steps must be a whole number"),
        ({"lr_scheduler": "linear", "lr_warmup_steps": -1}, "--lr_warmup_steps must be >= 0"),
        ({"lr_scheduler": "linear", "lr_scheduler_min_lr_ratio": 1.5}, "--lr_scheduler_min_lr_ratio"),
        ({"lr_scheduler": "polynomial", "lr_scheduler_power": 0.0}, "--lr_scheduler_power"),
        ({"lr_scheduler": "cosine_with_restarts", "lr_scheduler_num_cycles": 0}, "--lr_scheduler_num_cycles"),
    ],
)
def test_bad_settings_are_config_errors(kwargs: dict[str, object], option: str) -> None:
    with pytest.raises(ConfigError, match=option):
        build_lr_curve(num_training_steps=100, **kwargs)
