"""Every LoRA layout tuner reads, on the tiny FramePack DiT: merged output equals the unmerged network's.

A LoRA with random weights is trained-free on the tiny DiT; the q/k/v (and single blocks' MLP input) layers
share one ``lora_down`` so that the same LoRA also exists in HunyuanVideo's fused layout. Each layout is
written from it independently of the code under test, merged with ``LoRANetworkType.merge_into`` (after the
network type's ``normalize_weights``, as ``tuner generate`` does), and compared with the hooked network.
"""

from __future__ import annotations

import json
import logging
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import save_file

from tuner_core.errors import ConfigError
from tuner_core.network_files import NetworkFile, network_file_problems
from tuner_core.network_merge import merge_networks
from tuner_core.plugins import make_plugin_manager
from tuner_core.weights import layer_paths
from tuner_framepack.architecture import FramePackArchitecture
from tuner_framepack.testing.tiny_dit import build_tiny_dit, tiny_dit_config, tiny_dit_inputs
from tuner_lora import formats
from tuner_lora.lora_network import LoRANetworkType

LAYOUT = FramePackArchitecture.layout
TOLERANCE = 1e-5
#: HunyuanVideo's fused layers and the FramePack layers they feed, restated here for the test.
HV_DOUBLE = {
    "img_attn_qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
    "txt_attn_qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
    "img_attn_proj": ("attn.to_out.0",),
    "txt_attn_proj": ("attn.to_add_out",),
    "img_mlp.fc1": ("ff.net.0.proj",),
    "img_mlp.fc2": ("ff.net.2",),
    "txt_mlp.fc1": ("ff_context.net.0.proj",),
    "txt_mlp.fc2": ("ff_context.net.2",),
    "img_mod.linear": ("norm1.linear",),
    "txt_mod.linear": ("norm1_context.linear",),
}
HV_SINGLE = {
    "linear1": ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"),
    "linear2": ("proj_out",),
    "modulation.linear": ("norm.linear",),
}
#: Also the modulation layers, which the default targets leave out, so their mapping is checked too.
ARGS = {"include_patterns": [r".*norm1\.linear", r".*norm1_context\.linear", r".*\.norm\.linear"]}


def _groups(config):
    """``(HunyuanVideo name, FramePack paths)`` of every fused group of the tiny DiT."""
    for i in range(config.num_layers):
        for hv, fp in HV_DOUBLE.items():
            yield f"double_blocks.{i}.{hv}", [f"transformer_blocks.{i}.{p}" for p in fp]
    for i in range(config.num_single_layers):
        for hv, fp in HV_SINGLE.items():
            yield f"single_blocks.{i}.{hv}", [f"single_transformer_blocks.{i}.{p}" for p in fp]


def kohya(path: str) -> str:
    return "lora_unet_" + path.replace(".", "_")


@pytest.fixture(scope="module")
def setup():
    """The tiny DiT, a random LoRA on it (fused groups share lora_down), its state and the hooked output."""
    config = tiny_dit_config()
    model = build_tiny_dit(config, seed=3)
    network = LoRANetworkType().create(model, LAYOUT, dim=4, alpha=2.0, dropout=None, args=ARGS)
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for _, p in sorted(network.named_parameters()):
            p.copy_(torch.randn(p.shape, generator=generator) * 0.05)
        state = dict(network.named_parameters())
        for _, paths in _groups(config):
            first = state[f"{kohya(paths[0])}.lora_down.weight"]
            for path in paths[1:]:
                state[f"{kohya(path)}.lora_down.weight"].copy_(first)
    weights = {k: v.detach().clone() for k, v in network.adapter_state_dict().items()}
    inputs = tiny_dit_inputs(config, batch=1, text_lengths=(11,))
    network.apply_to(model)
    with torch.no_grad():
        hooked = model(**inputs)
    for adapter in network.adapters():
        adapter.remove()
    return SimpleNamespace(config=config, weights=weights, inputs=inputs, hooked=hooked)


def _merged_output(setup, weights, metadata=None, multiplier=1.0):
    model = build_tiny_dit(setup.config, seed=3)
    network_type = LoRANetworkType()
    assert network_type.can_load(set(weights))
    normalized = network_type.normalize_weights(LAYOUT, weights, metadata)
    unused = network_type.merge_into(model, LAYOUT, normalized, multiplier)
    assert unused == []
    with torch.no_grad():
        return model(**setup.inputs), model


def _layers(weights):
    """``{module path: (down, up, alpha)}`` of a tuner-named state (test-side reading)."""
    out = {}
    for key in weights:
        if key.endswith(".lora_down.weight"):
            name = key[: -len(".lora_down.weight")]
            out[name] = (weights[key], weights[f"{name}.lora_up.weight"], weights[f"{name}.alpha"])
    return out


def _diffusers_state(setup, prefix, *, alpha):
    """The LoRA under ``{prefix}{module path}.lora_A/B.weight``; alpha tensors, an adapter config, or none."""
    paths = {kohya(p): p for p in layer_paths(build_tiny_dit(setup.config))}
    state, alphas = {}, {}
    for name, (down, up, a) in _layers(setup.weights).items():
        path = paths[name]
        state[f"{prefix}{path}.lora_A.weight"] = down
        state[f"{prefix}{path}.lora_B.weight"] = up
        if alpha == "tensor":
            state[f"{prefix}{path}.alpha"] = a
        alphas[path] = float(a)
    return state, alphas


def test_tuner_layout_merges_like_the_hooked_network(setup):
    merged, _ = _merged_output(setup, setup.weights)
    assert (merged - setup.hooked).abs().max() <= TOLERANCE


@pytest.mark.parametrize("prefix", ["diffusion_model.", "transformer."])
def test_diffusers_and_comfy_layouts_with_alpha_tensors(setup, prefix):
    state, _ = _diffusers_state(setup, prefix, alpha="tensor")
    merged, _ = _merged_output(setup, state)
    assert (merged - setup.hooked).abs().max() <= TOLERANCE


@pytest.mark.parametrize("prefix", ["transformer.", "base_model.model."])
def test_diffusers_and_peft_layouts_take_alpha_from_the_adapter_config(setup, prefix):
    state, alphas = _diffusers_state(setup, prefix, alpha="config")
    scope = "transformer." if prefix == "transformer." else ""  # diffusers prefixes its keys, PEFT does not
    config = {f"{scope}r": 4, f"{scope}lora_alpha": 2.0}
    merged, _ = _merged_output(setup, state, {"lora_adapter_metadata": json.dumps(config)})
    assert (merged - setup.hooked).abs().max() <= TOLERANCE
    assert set(alphas.values()) == {2.0}


def test_diffusers_layout_without_alpha_is_alpha_equal_rank(setup):
    state, _ = _diffusers_state(setup, "diffusion_model.", alpha=None)
    merged, _ = _merged_output(setup, state, multiplier=0.5)  # rank 4, alpha 2 in the hooked network
    assert (merged - setup.hooked).abs().max() <= TOLERANCE


def _hunyuan_state(setup, *, spelling):
    """The same LoRA in HunyuanVideo's layout: one lora_down per fused group, the lora_up rows stacked."""
    layers = _layers(setup.weights)
    state = {}
    for hv, paths in _groups(setup.config):
        parts = [layers[kohya(p)] for p in paths]
        down, up, alpha = parts[0][0], torch.cat([p[1] for p in parts]), parts[0][2]
        if spelling == "kohya":
            base = kohya(hv)
            state.update(
                {f"{base}.lora_down.weight": down, f"{base}.lora_up.weight": up, f"{base}.alpha": alpha}
            )
        else:
            state.update(
                {
                    f"diffusion_model.{hv}.lora_A.weight": down,
                    f"diffusion_model.{hv}.lora_B.weight": up,
                    f"diffusion_model.{hv}.alpha": alpha,
                }
            )
    return state


@pytest.mark.parametrize("spelling", ["kohya", "diffusers"])
def test_hunyuan_video_layout_gives_the_framepack_layouts_deltas(setup, spelling):
    state = _hunyuan_state(setup, spelling=spelling)
    assert any("img_attn_qkv" in k for k in state) and any("linear1" in k for k in state)
    merged, hv_model = _merged_output(setup, state)
    assert (merged - setup.hooked).abs().max() <= TOLERANCE
    _, fp_model = _merged_output(setup, setup.weights)
    base = build_tiny_dit(setup.config, seed=3).state_dict()
    for key, weight in fp_model.state_dict().items():
        delta = hv_model.state_dict()[key] - base[key]
        torch.testing.assert_close(delta, weight - base[key], rtol=0, atol=1e-6, msg=key)


def test_hunyuan_final_layer_modulation_halves_are_swapped():
    model = build_tiny_dit(tiny_dit_config(), seed=3)
    before = model.norm_out.linear.weight.detach().clone()
    down, up = torch.randn(2, 64), torch.randn(128, 2)
    state = {
        "lora_unet_final_layer_adaLN_modulation_1.lora_down.weight": down,
        "lora_unet_final_layer_adaLN_modulation_1.lora_up.weight": up,
        "lora_unet_final_layer_adaLN_modulation_1.alpha": torch.tensor(2.0),
    }
    assert LoRANetworkType().merge_into(model, LAYOUT, state, 1.0) == []
    shift, scale = (up @ down).chunk(2)  # HunyuanVideo: (shift, scale); FramePack: (scale, shift)
    torch.testing.assert_close(model.norm_out.linear.weight - before, torch.cat([scale, shift]))


def test_a_fused_hunyuan_layers_up_bias_splits_with_its_rows():
    hidden = 64  # the tiny DiT's width: img_attn_qkv is 3 x 64 rows
    down, up, bias = torch.randn(2, hidden), torch.randn(3 * hidden, 2), torch.randn(3 * hidden)
    name = "lora_unet_double_blocks_1_img_attn_qkv"
    state = {f"{name}.lora_down.weight": down, f"{name}.lora_up.weight": up, f"{name}.lora_up.bias": bias}
    converted = formats.to_tuner(state, "lora_unet")
    assert not converted.unused
    for index, part in enumerate(("to_q", "to_k", "to_v")):
        key = f"lora_unet_transformer_blocks_1_attn_{part}.lora_up.bias"
        assert torch.equal(converted.weights[key], bias[index * hidden : (index + 1) * hidden])


def test_layouts_are_told_apart_and_foreign_files_described():
    assert formats.lora_layouts(
        {"lora_unet_transformer_blocks_0_attn_to_q.lora_down.weight"}, "lora_unet"
    ) == {formats.sniff.KOHYA}
    assert formats.lora_layouts({"transformer.proj_out.lora_A.weight"}, "lora_unet") == {
        formats.sniff.DIFFUSERS
    }
    assert formats.lora_layouts({"lora_unet_single_blocks_3_linear1.alpha"}, "lora_unet") == {
        formats.sniff.HUNYUAN_KOHYA
    }
    sdxl_te = {"lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight"}
    assert not LoRANetworkType().can_load(sdxl_te)
    assert formats.describe(sdxl_te, "lora_unet") == "an SDXL text-encoder LoRA"
    unet = {"lora_unet_input_blocks_4_1_proj_in.lora_down.weight", "lora_te_text_model_x.lora_down.weight"}
    assert formats.describe(unet, "lora_unet") == "an SD 1.x / SDXL UNet LoRA with text-encoder layers"
    assert "LoHa" in formats.describe({"lora_unet_x.hada_w1_a"}, "lora_unet")
    assert formats.describe({"diffusion_model.blocks.0.self_attn.q.lora_A.weight"}, "lora_unet") == (
        "a Wan 2.x LoRA"
    )
    assert formats.describe({"lora_unet_double_blocks_0_img_mod_lin.lora_down.weight"}, "lora_unet") == (
        "a FLUX.1 LoRA"
    )
    # A DiT shard given as a LoRA: plain layer weights, not a LoRA of any family.
    shard = {"transformer_blocks.0.attn.to_q.weight", "transformer_blocks.0.attn.to_q.bias"}
    assert formats.describe(shard, "lora_unet").startswith("a model checkpoint, not a LoRA")


# -- through the generate command's merging ------------------------------------------------------------


def _files(paths, multipliers=(), include=(), exclude=()):
    return [
        NetworkFile(
            path,
            multipliers[i] if i < len(multipliers) else 1.0,
            include[i] if i < len(include) else None,
            exclude[i] if i < len(exclude) else None,
        )
        for i, path in enumerate(paths)
    ]


def _merge(model, files, architecture, plugins):
    merge_networks(model, files, list(plugins.networks()), architecture)


@pytest.fixture(scope="module")
def plugins():
    return make_plugin_manager()


def test_two_files_in_two_layouts_combine_linearly(setup, plugins, tmp_path):
    first = tmp_path / "a.safetensors"
    save_file(setup.weights, str(first))
    other = {k: v * 0.5 if k.endswith("lora_up.weight") else v for k, v in setup.weights.items()}
    state, _ = _diffusers_state(
        SimpleNamespace(config=setup.config, weights=other), "diffusion_model.", alpha="tensor"
    )
    second = tmp_path / "b.safetensors"
    save_file(state, str(second))
    base = build_tiny_dit(setup.config, seed=3)
    model = build_tiny_dit(setup.config, seed=3)
    architecture = plugins.architecture("framepack")
    _merge(model, _files([first, second], [0.7, -0.4]), architecture, plugins)
    _, one = _merged_output(setup, setup.weights)
    for key, weight in model.state_dict().items():
        delta = one.state_dict()[key] - base.state_dict()[key]
        expected = base.state_dict()[key] + (0.7 - 0.4 * 0.5) * delta
        torch.testing.assert_close(weight, expected, rtol=0, atol=1e-6, msg=key)


def test_patterns_match_the_normalized_names(setup, plugins, tmp_path):
    path = tmp_path / "hv.safetensors"
    save_file(_hunyuan_state(setup, spelling="diffusers"), str(path))
    model = build_tiny_dit(setup.config, seed=3)
    base = build_tiny_dit(setup.config, seed=3).state_dict()
    files = _files([path], include=[r"^lora_unet_transformer_blocks_0_attn_to_q\."])
    _merge(model, files, plugins.architecture("framepack"), plugins)
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, base[k])}
    assert changed == {"transformer_blocks.0.attn.to_q.weight"}


def test_unmatched_layers_are_listed_once(setup, plugins, tmp_path, caplog):
    path = tmp_path / "extra.safetensors"
    extra = {
        "lora_unet_nowhere_0.lora_down.weight": torch.zeros(4, 64),
        "lora_unet_nowhere_0.lora_up.weight": torch.zeros(64, 4),
        "lora_unet_nowhere_0.alpha": torch.tensor(1.0),
    }
    save_file({**setup.weights, **extra}, str(path))
    with caplog.at_level(logging.WARNING):
        _merge(build_tiny_dit(setup.config), _files([path]), plugins.architecture("framepack"), plugins)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and warnings[0].count("lora_unet_nowhere_0") == 1, warnings
    assert "3 tensors (1 layers)" in warnings[0]


def test_a_file_of_which_nothing_matches_is_an_error_saying_what_it_looks_like(plugins, tmp_path):
    unet = tmp_path / "sdxl_unet.safetensors"
    save_file(
        {
            "lora_unet_input_blocks_4_1_proj_in.lora_down.weight": torch.zeros(4, 64),
            "lora_unet_input_blocks_4_1_proj_in.lora_up.weight": torch.zeros(64, 4),
        },
        str(unet),
    )
    architecture = plugins.architecture("framepack")
    with pytest.raises(
        ConfigError, match=r"sdxl_unet\.safetensors: none of its 2 tensors .* SD 1\.x / SDXL UNet"
    ):
        _merge(build_tiny_dit(tiny_dit_config()), _files([unet]), architecture, plugins)
    encoder = tmp_path / "te.safetensors"
    save_file(
        {"lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": torch.zeros(4, 8)}, str(encoder)
    )
    problems = network_file_problems(_files([unet, encoder]), list(plugins.networks()), architecture, None)
    assert len(problems) == 1 and "te.safetensors" in problems[0]
    assert "looks like an SDXL text-encoder LoRA" in problems[0]


def test_peft_lora_bias_updates_the_layer_bias_while_streaming_too(plugins, tmp_path):
    """PEFT's ``lora_bias``: ``lora_B.bias`` adds ``multiplier * alpha / rank * b`` to the layer's bias, both
    into a loaded model and while the checkpoint streams in (the stand-in path), with the same result."""
    from tuner_core.network_merge import NetworkMerge
    from tuner_core.weights import chain_transforms
    from tuner_framepack.dit import load_dit
    from tuner_framepack.testing.tiny_dit import save_diffusers_layout

    config = tiny_dit_config()
    generator = torch.Generator().manual_seed(4)
    paths = ["transformer_blocks.0.attn.to_q", "single_transformer_blocks.1.proj_out"]
    base = build_tiny_dit(config, seed=3)
    state = {}
    for path in paths:
        layer = base.get_submodule(path)
        state[f"transformer.{path}.lora_A.weight"] = torch.randn(2, layer.in_features, generator=generator)
        state[f"transformer.{path}.lora_B.weight"] = torch.randn(layer.out_features, 2, generator=generator)
        state[f"transformer.{path}.lora_B.bias"] = torch.randn(layer.out_features, generator=generator)
        state[f"transformer.{path}.alpha"] = torch.tensor(1.0)
    lora = tmp_path / "biased.safetensors"
    save_file(state, str(lora))
    architecture = plugins.architecture("framepack")
    merged = build_tiny_dit(config, seed=3)
    _merge(merged, _files([lora], [0.5]), architecture, plugins)
    for path in paths:
        expected = base.get_submodule(path).bias + 0.5 * 0.5 * state[f"transformer.{path}.lora_B.bias"]
        torch.testing.assert_close(merged.get_submodule(path).bias, expected, rtol=0, atol=1e-6)
    snapshot = save_diffusers_layout(base, config, tmp_path / "dit").shards[0]
    merge = NetworkMerge(_files([lora], [0.5]), list(plugins.networks()), architecture)
    streamed = load_dit(
        snapshot, config={"rope_axes_dim": config.rope_axes_dim}, transform=chain_transforms(merge)
    )
    merge.finish(streamed)
    for key, tensor in merged.state_dict().items():
        assert torch.equal(streamed.state_dict()[key], tensor), key
