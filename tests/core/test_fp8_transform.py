"""The public fp8 functions a plugin uses for its own fp8 option (FramePack's --fp8_llm): a loader transform
that stores a model's Linear weights in fp8 while they stream in, and the switch to the core's Fp8Linear."""

from __future__ import annotations

from collections.abc import Mapping

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tuner_core import PluginError, fp8_linear_transform, use_fp8_linears
from tuner_core.memory.fp8_linear import Fp8Linear, make_fp8_linear
from tuner_core.weights import StateDictSource, StoredPlan, TensorInfo, chain_transforms, load_into_model

FP8 = torch.float8_e4m3fn


class Encoder(nn.Module):
    """Embedding, norm and Linears like a text encoder's, one Linear nested a level deeper."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(32, 64)
        self.norm = nn.LayerNorm(64)
        self.proj = nn.Linear(64, 128)
        self.mlp = nn.Sequential(nn.Linear(128, 64, bias=False))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.mlp(F.gelu(self.proj(self.norm(self.embed(ids)))))


def state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {k: v * 0.5 for k, v in Encoder().state_dict().items()}


def load(transform_for, weights: Mapping[str, torch.Tensor]) -> Encoder:
    with torch.device("meta"):
        model = Encoder()
    load_into_model(model, StateDictSource(dict(weights), "enc.safetensors"), transform=transform_for(model))
    return model


def test_exactly_the_linear_weights_are_stored_in_fp8_and_compute_as_rounded():
    weights = state()
    model = load(fp8_linear_transform, weights)
    fp8 = {name for name, p in model.named_parameters() if p.dtype == FP8}
    assert fp8 == {"proj.weight", "mlp.0.weight"}  # not the bias, the embedding or the norm
    assert use_fp8_linears(model) == 2
    assert isinstance(model.proj, Fp8Linear) and isinstance(model.mlp[0], Fp8Linear)
    rounded = Encoder()
    rounded.load_state_dict({k: v.to(FP8).float() if k in fp8 else v for k, v in weights.items()})
    full = Encoder()
    full.load_state_dict(weights)
    ids = torch.randint(0, 32, (2, 7))
    with torch.no_grad():
        out = model(ids)
        assert torch.equal(out, rounded(ids))  # the upcast per layer is the only change
        assert F.cosine_similarity(out.flatten(), full(ids).flatten(), dim=0) > 0.99


def test_select_picks_among_the_linear_weights():
    model = load(lambda m: fp8_linear_transform(m, select=lambda name: name.startswith("mlp.")), state())
    assert {name for name, p in model.named_parameters() if p.dtype == FP8} == {"mlp.0.weight"}
    assert use_fp8_linears(model) == 1 and type(model.proj) is nn.Linear


class Doubling:
    """A stand-in for the memory strategies' transform: rewrites each tensor and plans the load."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.planned: Mapping[str, TensorInfo] | None = None

    def plan(self, stored: Mapping[str, TensorInfo]) -> StoredPlan:
        self.planned = stored
        return StoredPlan(uncast=frozenset({"norm.weight"}))

    def __call__(self, key: str, tensor: torch.Tensor) -> dict[str, torch.Tensor]:
        self.seen.append(key)
        return {key: tensor * 2}


def test_a_transform_chained_before_runs_first_and_keeps_its_plan():
    inner = Doubling()
    weights = state()
    transform = chain_transforms(inner, fp8_linear_transform(Encoder()))
    assert transform.plan({}) == StoredPlan(uncast=frozenset({"norm.weight"}))  # type: ignore[attr-defined]
    model = load(lambda m: chain_transforms(inner, fp8_linear_transform(m)), weights)
    assert inner.planned is not None and set(inner.seen) == set(weights)
    assert torch.equal(model.proj.weight, (weights["proj.weight"] * 2).to(FP8))
    assert torch.equal(model.embed.weight, weights["embed.weight"] * 2)


def test_use_fp8_linears_keeps_converted_layers_and_refuses_fp8_outside_linears():
    model = load(fp8_linear_transform, state())
    make_fp8_linear(model.proj).fp8_fast = True  # as a strategy's --fp8_fast would have set it
    assert use_fp8_linears(model) == 2 and model.proj.fp8_fast
    model.norm.weight = nn.Parameter(model.norm.weight.detach().to(FP8), requires_grad=False)
    with pytest.raises(PluginError, match="norm.weight.*LayerNorm is not a Linear"):
        use_fp8_linears(model)
