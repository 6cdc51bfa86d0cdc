"""Activation offload (--gradient_checkpointing_cpu_offload): checkpointed block inputs wait on the host.

On a machine without CUDA the offload device is the compute device, so nothing would move; the tests set
``always_copy`` to run the copy and restore path, and check gradients, what passes through the hooks, LoRA,
the FramePack DiT, and a real toy training run.
"""

from __future__ import annotations

import gc
import logging

import pytest
import torch
from safetensors.torch import load_file

from tuner_core import ModelLayout
from tuner_core.errors import NotAvailableError
from tuner_core.memory.activation_offload import ActivationOffload
from tuner_core.memory.apply import apply_memory_strategies, check_memory_options, unavailable_memory_options
from tuner_core.memory.checkpointing import GradientCheckpointing, activation_offload
from tuner_core.memory.strategy import MemorySettings
from tuner_core.plugins import make_plugin_manager
from tuner_lora.lora_network import LoRANetworkType
from tuner_toy.models import LATENT_CHANNELS, TEXT_DIM, ToyDenoiser

from ..engine.helpers import cache_all, run, train_values

LAYOUT = ModelLayout(block_lists=("blocks",), network_targets=("ToyBlock",), network_exclude=(r".*norm.*",))
DEPTH = 3
PLAIN = MemorySettings(training=True)
CHECKPOINTED = MemorySettings(training=True, gradient_checkpointing=True)
OFFLOADED = MemorySettings(
    training=True, gradient_checkpointing=True, gradient_checkpointing_cpu_offload=True
)


def toy_model(settings: MemorySettings, *, seed: int = 0) -> ToyDenoiser:
    torch.manual_seed(seed)
    model = ToyDenoiser(dim=32, heads=2, depth=DEPTH)
    if settings.gradient_checkpointing:
        GradientCheckpointing().apply(model, LAYOUT, settings, torch.device("cpu"))
    offload = activation_offload(model)
    if offload is not None:
        offload.always_copy = True  # one device here: copy anyway, so the copies are what backward sees
    return model.train()


def toy_inputs(seed: int = 1) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(2, LATENT_CHANNELS, 2, 8, 8, generator=g),
        torch.rand(2, generator=g) * 1000,
        torch.randn(2, 5, TEXT_DIM, generator=g),
        torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool),
        torch.randn(2, TEXT_DIM, generator=g),
    )


def gradients(model: torch.nn.Module, *, network: torch.nn.Module | None = None) -> dict[str, torch.Tensor]:
    latents, timesteps, text, mask, pooled = toy_inputs()
    model(latents, timesteps, text, mask, pooled).square().mean().backward()
    params = (network or model).named_parameters()
    return {name: p.grad.clone() for name, p in params if p.requires_grad}


def test_offloaded_gradients_equal_plain_checkpointing_exactly():
    plain, checkpointed, offloaded = (gradients(toy_model(s)) for s in (PLAIN, CHECKPOINTED, OFFLOADED))
    assert checkpointed.keys() == offloaded.keys() == plain.keys()
    for name in plain:
        assert torch.equal(offloaded[name], checkpointed[name]), name
        assert torch.allclose(offloaded[name], plain[name], rtol=1e-5, atol=1e-7), name


def test_block_inputs_pass_through_the_offload_and_shared_ones_are_copied_once():
    model = toy_model(OFFLOADED)
    offload = activation_offload(model)
    seen: list[torch.Tensor] = []
    original = offload.offload
    offload.offload = lambda t: seen.append(t) or original(t)  # hooks() reads it when each block runs
    gradients(model)
    # Each toy block receives (x, temb, context, mask); temb, context and mask are the same tensors for all.
    assert offload.counts.offloaded == 4 * DEPTH
    assert offload.counts.copied == DEPTH + 3
    assert offload.counts.restored == 4 * DEPTH  # every input came back for its block's recomputation
    assert offload.counts.copied_bytes == sum(
        t.numel() * t.element_size() for t in {id(t): t for t in seen}.values()
    )


def test_offload_hook_is_called_per_block_input(monkeypatch):
    calls: list[tuple[int, ...]] = []
    original = ActivationOffload.offload

    def recording(self, tensor):
        calls.append(tuple(tensor.shape))
        return original(self, tensor)

    monkeypatch.setattr(ActivationOffload, "offload", recording)
    gradients(toy_model(OFFLOADED))
    x_shape = (2, 2 * 4 * 4, 32)  # (B, T * H/2 * W/2, dim): the hidden states entering each block
    assert calls.count(x_shape) == DEPTH
    assert len(calls) == 4 * DEPTH


def test_restored_tensors_are_the_copies_not_the_originals():
    offload = ActivationOffload("cpu", always_copy=True)
    x = torch.randn(4, 3, requires_grad=True)
    with offload.hooks():
        y = torch.utils.checkpoint.checkpoint(lambda a: (a * a).sum(), x, use_reentrant=False)
    (packed,) = [entry[2] for entry in offload._copies.values()]
    assert packed.stored.data_ptr() != x.data_ptr() and torch.equal(packed.stored, x)
    y.backward()
    assert torch.equal(x.grad, 2 * x.detach())


def test_a_tensor_changed_in_place_is_copied_again():
    offload = ActivationOffload("cpu", always_copy=True)
    shared = torch.ones(3)
    first = offload.offload(shared)
    assert offload.offload(shared) is first
    shared.add_(1)
    second = offload.offload(shared)
    assert (
        second is not first
        and torch.equal(second.stored, shared)
        and torch.equal(first.stored, torch.ones(3))
    )


@pytest.mark.parametrize("always_copy", [True, False])
def test_nothing_is_kept_once_the_tensors_die(always_copy):
    model = toy_model(OFFLOADED)
    offload = activation_offload(model)
    offload.always_copy = always_copy
    gradients(model)
    gc.collect()
    assert offload._copies == {}
    assert offload.counts.copied == (DEPTH + 3 if always_copy else 0)  # on the offload device already


def test_no_offload_outside_training_or_without_grad():
    model = toy_model(OFFLOADED)
    offload = activation_offload(model)
    latents, timesteps, text, mask, pooled = toy_inputs()
    with torch.no_grad():
        model(latents, timesteps, text, mask, pooled)
    model.eval()
    model(latents, timesteps, text, mask, pooled)
    assert offload.counts.offloaded == 0


def test_offload_alone_implies_checkpointing_and_says_so(caplog):
    settings = MemorySettings(training=True, gradient_checkpointing_cpu_offload=True)
    model = ToyDenoiser(dim=32, heads=2, depth=DEPTH)
    with caplog.at_level(logging.INFO, logger="tuner_core.memory.checkpointing"):
        applied = apply_memory_strategies(model, LAYOUT, settings, make_plugin_manager(), torch.device("cpu"))
    assert applied == ["gradient-checkpointing"]
    assert activation_offload(model) is not None and all(b._tuner_checkpointed for b in model.blocks)
    assert "activation offload (implies --gradient_checkpointing)" in caplog.text
    assert not GradientCheckpointing().enabled(MemorySettings(gradient_checkpointing_cpu_offload=True))


def test_the_options_are_available_through_the_core_strategy():
    missing = unavailable_memory_options(make_plugin_manager(), training=True)
    assert "gradient_checkpointing" not in missing and "gradient_checkpointing_cpu_offload" not in missing
    check_memory_options(OFFLOADED, make_plugin_manager())  # accepted

    class NoStrategies:
        def memory_strategies(self):
            return []

    assert {"gradient_checkpointing", "gradient_checkpointing_cpu_offload"} <= unavailable_memory_options(
        NoStrategies(), training=True
    )
    with pytest.raises(NotAvailableError, match="--gradient_checkpointing_cpu_offload"):
        check_memory_options(
            MemorySettings(training=True, gradient_checkpointing_cpu_offload=True), NoStrategies()
        )


def lora_gradients(settings: MemorySettings) -> dict[str, torch.Tensor]:
    model = toy_model(settings)
    model.requires_grad_(False)
    network = LoRANetworkType().create(model, LAYOUT, dim=4, alpha=4.0, dropout=None, args={})
    torch.manual_seed(5)
    for name, param in network.named_parameters():
        if "lora_up" in name:  # LoRA starts with zero up-weights: give the down-weights a gradient too
            torch.nn.init.normal_(param, std=0.1)
    network.apply_to(model)
    return gradients(model, network=network)


def test_lora_gradients_equal_with_and_without_offload():
    plain, checkpointed, offloaded = (lora_gradients(s) for s in (PLAIN, CHECKPOINTED, OFFLOADED))
    assert len(plain) == 2 * 6 * DEPTH  # down and up of 6 Linear layers per block
    for name in plain:
        assert plain[name].abs().max() > 0, name
        assert torch.equal(offloaded[name], checkpointed[name]), name
        assert torch.allclose(offloaded[name], plain[name], rtol=1e-5, atol=1e-7), name


def test_framepack_dit_gradients_equal_with_offload():
    from tuner_framepack.architecture import FramePackArchitecture
    from tuner_framepack.testing.tiny_dit import build_tiny_dit, tiny_dit_config, tiny_dit_inputs

    config = tiny_dit_config()
    inputs = tiny_dit_inputs(config, batch=2, text_lengths=(7, 16))
    results = []
    for settings in (CHECKPOINTED, OFFLOADED):
        model = build_tiny_dit(config, seed=11)
        apply_memory_strategies(
            model, FramePackArchitecture.layout, settings, make_plugin_manager(), torch.device("cpu")
        )
        if settings.gradient_checkpointing_cpu_offload:
            activation_offload(model).always_copy = True
        model.train()(**inputs).square().mean().backward()
        results.append({n: p.grad for n, p in model.named_parameters()})
        if settings.gradient_checkpointing_cpu_offload:
            counts = activation_offload(model).counts
            # 2 double + 2 single blocks; RoPE table, temb and mask are shared, so fewer copies than inputs.
            assert counts.restored == counts.offloaded > counts.copied > 0
    checkpointed, offloaded = results
    assert all(torch.equal(offloaded[n], checkpointed[n]) for n in checkpointed)


@pytest.fixture
def toy(tmp_path):
    from types import SimpleNamespace

    from tuner_toy.build import make_toy_models
    from tuner_toy.sample_data import make_sample_dataset

    files = make_toy_models(tmp_path / "models")
    dataset = make_sample_dataset(tmp_path, videos=6, frames=9, size=32)
    return SimpleNamespace(dataset=dataset, vae=files.vae, text_encoder=files.text_encoder, dit=files.dit)


def test_a_toy_training_run_uses_the_offload_and_trains_the_same(toy, tmp_path, monkeypatch):
    cache_all(toy)
    calls = []
    original = ActivationOffload.offload
    monkeypatch.setattr(ActivationOffload, "offload", lambda self, t: calls.append(1) or original(self, t))
    run("train", train_values(toy, tmp_path / "gc", max_train_steps=3, gradient_checkpointing=True))
    assert calls == []
    run(
        "train",
        train_values(toy, tmp_path / "off", max_train_steps=3, gradient_checkpointing_cpu_offload=True),
    )
    assert len(calls) > 0 and len(calls) % 3 == 0  # the same inputs each of the 3 steps
    a, b = (load_file(str(tmp_path / name / "last.safetensors")) for name in ("gc", "off"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
