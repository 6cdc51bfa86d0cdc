"""Optimizer construction from --optimizer_type / --optimizer_args, its errors, and its metadata string."""

from __future__ import annotations

import pytest
import torch

from tuner_core.errors import ConfigError, NotAvailableError
from tuner_core.training import optimizers
from tuner_core.training.optimizers import (
    build_optimizer,
    optimizer_description,
    parse_optimizer_args,
    resolve_optimizer_class,
    uses_relative_step,
)


def params(n: int = 8) -> list[torch.nn.Parameter]:
    return [torch.nn.Parameter(torch.linspace(-1, 1, n))]


def one_step(optimizer: torch.optim.Optimizer, parameter: torch.nn.Parameter) -> torch.Tensor:
    before = parameter.detach().clone()
    parameter.grad = torch.ones_like(parameter)
    optimizer.step()
    return parameter.detach() - before


def test_parse_optimizer_args_literals_and_fallback() -> None:
    parsed = parse_optimizer_args(
        ["weight_decay=0.01", "betas=0.9,0.999", "amsgrad=True", "eps=1e-8", "name=bar", "d= 2 "]
    )
    assert parsed == {
        "weight_decay": 0.01,
        "betas": (0.9, 0.999),
        "amsgrad": True,
        "eps": 1e-8,
        "name": "bar",
        "d": 2,
    }
    assert parse_optimizer_args(None) == {} and parse_optimizer_args({"a": 1}) == {"a": 1}
    assert parse_optimizer_args(["expr=a=b"]) == {"expr": "a=b"}  # only the first '=' splits


@pytest.mark.parametrize("bad", [["weight_decay"], ["=3"], ["not a key=1"], ["a=1", "a=2"]])
def test_parse_optimizer_args_rejects_malformed_items(bad: list[str]) -> None:
    with pytest.raises(ConfigError, match="--optimizer_args"):
        parse_optimizer_args(bad)


def test_adamw_default_path() -> None:
    ps = params()
    built = build_optimizer(ps, learning_rate=1e-3, optimizer_args=["weight_decay=0.1", "betas=0.8,0.99"])
    assert type(built.optimizer) is torch.optim.AdamW and not built.relative_step
    group = built.optimizer.param_groups[0]
    assert group["lr"] == 1e-3 and group["weight_decay"] == 0.1 and group["betas"] == (0.8, 0.99)
    assert built.description == "torch.optim.adamw.AdamW(weight_decay=0.1,betas=(0.8, 0.99))"
    assert build_optimizer(params(), optimizer_type="adamw", learning_rate=1.0).description == (
        "torch.optim.adamw.AdamW"
    )
    assert float(one_step(built.optimizer, ps[0]).abs().max()) > 0


def test_parameter_groups_keep_their_own_lr() -> None:
    a, b = params(), params()
    built = build_optimizer([{"params": a}, {"params": b, "lr": 0.5}], learning_rate=0.1)
    assert [g["lr"] for g in built.optimizer.param_groups] == [0.1, 0.5]


def test_dotted_class_path_and_torch_optim_name() -> None:
    built = build_optimizer(
        params(), optimizer_type="torch.optim.SGD", learning_rate=0.1, optimizer_args=["momentum=0.9"]
    )
    assert type(built.optimizer) is torch.optim.SGD and built.optimizer.param_groups[0]["momentum"] == 0.9
    assert built.description == "torch.optim.sgd.SGD(momentum=0.9)"
    assert resolve_optimizer_class("RMSprop") is torch.optim.RMSprop


@pytest.mark.parametrize(
    ("name", "error", "text"),
    [
        ("Lion", ConfigError, "--optimizer_type 'Lion' is unknown"),
        ("torch.optim.NoSuchOptimizer", ConfigError, "has no 'NoSuchOptimizer'"),
        ("no_such_package_xyz.Opt", NotAvailableError, "cannot import no_such_package_xyz"),
        ("math.sqrt", ConfigError, "is not a torch.optim.Optimizer class"),
        ("torch.nn.Linear", ConfigError, "is not a torch.optim.Optimizer class"),
    ],
)
def test_unknown_optimizer_type(name: str, error: type[Exception], text: str) -> None:
    with pytest.raises(error, match="--optimizer_type") as info:
        build_optimizer(params(), optimizer_type=name, learning_rate=0.1)
    assert text in str(info.value)


def test_arguments_the_optimizer_rejects_name_optimizer_args() -> None:
    with pytest.raises(
        ConfigError, match=r"--optimizer_args .*momentun=0.9.* rejected by torch.optim.sgd.SGD"
    ):
        build_optimizer(
            params(), optimizer_type="torch.optim.SGD", learning_rate=0.1, optimizer_args=["momentun=0.9"]
        )
    with pytest.raises(ConfigError, match="--optimizer_args"):
        build_optimizer(params(), learning_rate=0.1, optimizer_args=["betas=2.0,0.9"])  # AdamW's ValueError
    with pytest.raises(ConfigError, match="--learning_rate"):
        build_optimizer(params(), learning_rate=0.1, optimizer_args=["lr=0.2"])


def test_no_parameters_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="nothing to train"):
        build_optimizer(iter([]), learning_rate=0.1)


def test_adafactor_relative_step_default() -> None:
    pytest.importorskip("transformers")
    built = build_optimizer(params(), optimizer_type="AdaFactor", learning_rate=1e-3)
    assert built.relative_step and uses_relative_step(built.optimizer)
    assert built.optimizer.param_groups[0]["lr"] is None and built.kwargs == {"relative_step": True}
    assert built.description == "transformers.optimization.Adafactor(relative_step=True)"


def test_adafactor_with_external_learning_rate_and_warmup_init() -> None:
    pytest.importorskip("transformers")
    ps = params()
    built = build_optimizer(
        ps,
        optimizer_type="adafactor",
        learning_rate=1e-2,
        optimizer_args=["relative_step=False", "scale_parameter=False"],
    )
    assert not built.relative_step and not uses_relative_step(built.optimizer)
    assert built.optimizer.param_groups[0]["lr"] == 1e-2
    assert float(one_step(built.optimizer, ps[0]).abs().max()) > 0
    # warmup_init only exists with relative_step, so it turns relative_step back on.
    forced = build_optimizer(
        params(),
        optimizer_type="AdaFactor",
        learning_rate=1e-2,
        optimizer_args=["relative_step=False", "warmup_init=True"],
    )
    assert forced.relative_step and forced.kwargs["relative_step"] is True


def test_adamw8bit_runs_or_says_why_not() -> None:
    pytest.importorskip("bitsandbytes")
    ps = [torch.nn.Parameter(torch.linspace(-1, 1, 8192))]  # large enough for 8-bit state
    try:
        built = build_optimizer(ps, optimizer_type="AdamW8bit", learning_rate=1e-3)
    except NotAvailableError as error:  # this machine's bitsandbytes has no usable backend
        assert "--optimizer_type AdamW8bit" in str(error) and "8-bit optimizers do not work" in str(error)
        return
    assert type(built.optimizer).__name__ == "AdamW8bit"
    assert built.description == "bitsandbytes.optim.adamw.AdamW8bit"
    assert float(one_step(built.optimizer, ps[0]).abs().max()) > 0
    assert built.optimizer.state[ps[0]]["state1"].dtype == torch.uint8


def test_adamw8bit_without_a_working_backend_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    class BrokenEightBit(torch.optim.Optimizer):
        __module__ = "bitsandbytes.optim.adamw"

        def __init__(self, params: object, lr: float = 1e-3) -> None:
            super().__init__(params, {"lr": lr})

        def step(self, closure: object = None) -> None:
            raise RuntimeError("no kernel for device cpu")

    monkeypatch.setattr(optimizers, "resolve_optimizer_class", lambda name: BrokenEightBit)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(
        NotAvailableError, match="no CUDA device .*no kernel for device cpu.*--optimizer_type AdamW"
    ):
        build_optimizer(params(), optimizer_type="AdamW8bit", learning_rate=1e-3)


def test_optimizer_description_format() -> None:
    assert optimizer_description(torch.optim.SGD, {}) == "torch.optim.sgd.SGD"
    assert optimizer_description(torch.optim.SGD, {"momentum": 0.9, "nesterov": True}) == (
        "torch.optim.sgd.SGD(momentum=0.9,nesterov=True)"
    )
