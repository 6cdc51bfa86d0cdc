"""LoRA files merged into the FramePack DiT while it streams in, before fp8 quantises each weight.

Merging while loading must give exactly what merging into the whole bf16 model and quantising it afterwards
gives (the reference's order), for ``--lora_weight`` in generate (also saved with ``--save_merged_model``)
and ``--base_weights`` in train.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from tuner_cli.parser import build_command_options
from tuner_core.commands.preflight import preflight
from tuner_core.commands.run import run_command
from tuner_core.errors import ConfigError, ModelLoadError
from tuner_core.memory.apply import apply_memory_strategies, load_transform
from tuner_core.memory.fp8_format import FP8_DTYPE
from tuner_core.memory.strategy import MemorySettings
from tuner_core.network_files import NetworkFile
from tuner_core.network_merge import NetworkMerge, merge_networks
from tuner_core.plugins import make_plugin_manager
from tuner_core.training.model_setup import prepare_model
from tuner_core.weights import chain_transforms
from tuner_framepack.architecture import FramePackArchitecture
from tuner_framepack.dit import load_dit
from tuner_framepack.testing.tiny_dit import (
    build_tiny_dit,
    save_diffusers_layout,
    tiny_dit_config,
    tiny_dit_inputs,
)
from tuner_lora.lora_network import lora_name, target_layers

LAYOUT = FramePackArchitecture.layout
CONFIG = tiny_dit_config()
ROPE = {"rope_axes_dim": CONFIG.rope_axes_dim}


@pytest.fixture(scope="module")
def plugins():
    return make_plugin_manager()


@pytest.fixture(scope="module")
def dit_file(tmp_path_factory) -> Path:
    model = build_tiny_dit(CONFIG).to(torch.bfloat16)
    return save_diffusers_layout(model, CONFIG, tmp_path_factory.mktemp("dit"), num_shards=2).shards[0]


def random_lora(path: Path, *, seed: int, rank: int = 4, every: int = 1) -> Path:
    """A kohya-named LoRA with random (non-zero) up and down weights on every ``every``-th target layer."""
    generator = torch.Generator().manual_seed(seed)
    model = build_tiny_dit(CONFIG)
    tensors = {}
    for index, (layer_path, layer) in enumerate(target_layers(model, LAYOUT, {})):
        if index % every:
            continue
        name = lora_name(LAYOUT.network_prefix, layer_path)
        tensors[f"{name}.lora_down.weight"] = torch.randn(rank, layer.in_features, generator=generator) * 0.1
        tensors[f"{name}.lora_up.weight"] = torch.randn(layer.out_features, rank, generator=generator) * 0.1
        tensors[f"{name}.alpha"] = torch.tensor(float(rank) / 2)
    save_file(tensors, str(path))
    return path


def load(path: Path, settings: MemorySettings, plugins, files=()) -> nn.Module:
    """The DiT through the real loader: the files merged while streaming, then the memory strategies."""
    architecture = plugins.architecture("framepack")
    merge = NetworkMerge(files, list(plugins.networks()), architecture) if files else None
    transform = chain_transforms(merge, load_transform(LAYOUT, settings, plugins))
    model = load_dit(path, config=ROPE, dtype=torch.bfloat16, transform=transform)
    if merge is not None:
        merge.finish(model)
    apply_memory_strategies(model, LAYOUT, settings, plugins, torch.device("cpu"))
    return model


def train_options(dit_file: Path, tmp_path: Path, plugins, **values):
    """``tuner train`` options for a LoRA on the tiny DiT, with ``values`` on top."""
    base = {"dataset_config": tmp_path / "unused.toml", "dit": dit_file, "output_dir": tmp_path}
    architecture = plugins.architecture("framepack")
    values = {**base, "network_module": "lora", **values}
    return build_command_options("train", architecture, values, {}, None, plugins.memory_strategies())


def assert_same_state(a: nn.Module, b: nn.Module) -> None:
    first, second = a.state_dict(), b.state_dict()
    assert first.keys() == second.keys()
    for key, tensor in first.items():
        other = second[key]
        assert tensor.dtype == other.dtype, key
        if tensor.dtype == FP8_DTYPE:
            tensor, other = tensor.view(torch.uint8), other.view(torch.uint8)
        assert torch.equal(tensor, other), key


SCALED = MemorySettings(fp8_base=True, fp8_scaled=True)


@pytest.mark.parametrize("settings", [SCALED, MemorySettings(fp8_base=True)], ids=["fp8_scaled", "fp8"])
def test_merging_while_streaming_equals_merging_the_bf16_model_then_quantising(
    dit_file, plugins, tmp_path, settings
):
    files = [
        NetworkFile(random_lora(tmp_path / "a.safetensors", seed=1), 0.8),
        NetworkFile(random_lora(tmp_path / "b.safetensors", seed=2, every=3), -0.5),
    ]
    streamed = load(dit_file, settings, plugins, files)
    # The reference's order, on the whole model: bf16 loaded, merged, saved, then quantised while loading.
    whole = load(dit_file, MemorySettings(), plugins)
    merge_networks(whole, files, list(plugins.networks()), plugins.architecture("framepack"))
    merged_file = tmp_path / "merged_bf16.safetensors"
    save_file({k: v.contiguous() for k, v in whole.state_dict().items()}, str(merged_file))
    quantised_after = load(merged_file, settings, plugins)
    assert_same_state(streamed, quantised_after)
    unmerged = load(dit_file, settings, plugins)
    inputs = tiny_dit_inputs(CONFIG, dtype=torch.bfloat16)
    with torch.no_grad():
        out, expected, without = streamed(**inputs), quantised_after(**inputs), unmerged(**inputs)
    assert torch.equal(out, expected)
    assert not torch.allclose(out, without)  # the LoRA did change the model


def test_generate_with_a_lora_on_fp8_scaled_saves_the_references_format(dit_file, plugins, tmp_path):
    lora = random_lora(tmp_path / "style.safetensors", seed=3)
    saved = tmp_path / "merged_fp8.safetensors"
    architecture = plugins.architecture("framepack")
    values = {"dit": dit_file, "fp8_scaled": True, "lora_weight": [lora], "save_merged_model": saved}
    opts = build_command_options("generate", architecture, values, {}, None, plugins.memory_strategies())
    run_command("generate", opts, architecture=architecture, plugins=plugins)
    stored = load_file(str(saved))
    scales = [k for k in stored if k.endswith(".scale_weight")]
    assert len(scales) == 2 * 12 + 2 * 5
    expected = load(dit_file, SCALED, plugins, [NetworkFile(lora)]).state_dict()
    for key in scales:
        weight = key.replace(".scale_weight", ".weight")
        assert stored[weight].dtype == FP8_DTYPE
        assert torch.equal(stored[weight].view(torch.uint8), expected[weight].view(torch.uint8))
        assert torch.equal(stored[key], expected[key])


def test_a_checkpoint_stored_in_fp8_is_not_merged_into(dit_file, plugins, tmp_path):
    quantised = tmp_path / "fp8.safetensors"
    save_file({k: v.contiguous() for k, v in load(dit_file, SCALED, plugins).state_dict().items()}, quantised)
    lora = NetworkFile(random_lora(tmp_path / "style.safetensors", seed=4))
    with pytest.raises(ModelLoadError, match=r"stored in float8_e4m3fn; --lora_weight style\.safetensors"):
        load(quantised, SCALED, plugins, [lora])


def test_base_weights_merge_before_the_fp8_base_quantises(dit_file, plugins, tmp_path):
    lora = random_lora(tmp_path / "base.safetensors", seed=5)
    architecture = plugins.architecture("framepack")
    train = train_options(
        dit_file, tmp_path, plugins, fp8_scaled=True, base_weights=[lora], base_weights_multiplier=[0.7]
    )
    model = prepare_model(train, architecture, plugins, torch.device("cpu")).step.model
    expected = load(dit_file, SCALED, plugins, [NetworkFile(lora, 0.7, option="--base_weights")])
    for key, tensor in expected.state_dict().items():
        got = model.state_dict()[key]
        if tensor.dtype == FP8_DTYPE:
            assert torch.equal(got.view(torch.uint8), tensor.view(torch.uint8)), key


def test_a_base_weights_file_no_network_type_reads_is_refused_in_pre_flight(dit_file, plugins, tmp_path):
    odd = tmp_path / "odd.safetensors"
    save_file({"some.tensor": torch.zeros(2)}, str(odd))
    architecture = plugins.architecture("framepack")
    train = train_options(dit_file, tmp_path, plugins, base_weights=[odd])
    with pytest.raises(ConfigError, match=r"--base_weights .*odd\.safetensors: no installed network type"):
        preflight("train", train, architecture, plugins)
