"""``tuner convert-lora``: every FramePack module name survives, round trips are bit-exact, and a file
converted for diffusers loads into diffusers' own FramePack model with its own LoRA loading."""

from __future__ import annotations

import json
import logging
import re

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from tuner_cli.main import main
from tuner_core.weights import layer_paths
from tuner_framepack.architecture import FramePackArchitecture
from tuner_framepack.testing.tiny_dit import (
    build_tiny_dit,
    save_single_file,
    tiny_dit_config,
    tiny_dit_inputs,
)
from tuner_lora import formats
from tuner_lora.lora_network import LoRANetworkType

LAYOUT = FramePackArchitecture.layout
META = {"ss_network_module": "networks.lora", "ss_network_dim": "4", "modelspec.title": "t", "ss_seed": "1"}


def _random_lora(
    model, *, ranks=(4,), alphas=(1.0,), linear_only=False, dtype=torch.float32, seed=0, up_bias=False
):
    """A tuner-layout LoRA on every layer of ``model`` (Linear and Conv), ranks and alphas cycling;
    ``up_bias``: with PEFT's ``lora_bias`` (a ``lora_up.bias`` per Linear layer)."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    layers = [
        (n, m)
        for n, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) or (not linear_only and isinstance(m, torch.nn.Conv3d))
    ]
    for index, (path, layer) in enumerate(layers):
        rank, alpha = ranks[index % len(ranks)], alphas[index % len(alphas)]
        if isinstance(layer, torch.nn.Linear):
            down, up = (rank, layer.in_features), (layer.out_features, rank)
        else:
            down = (rank, layer.in_channels, *layer.kernel_size)
            up = (layer.out_channels, rank, 1, 1, 1)
        name = formats.kohya_name("lora_unet", path)
        state[f"{name}.lora_down.weight"] = (torch.randn(down, generator=generator) * 0.1).to(dtype)
        state[f"{name}.lora_up.weight"] = (torch.randn(up, generator=generator) * 0.1).to(dtype)
        state[f"{name}.alpha"] = torch.tensor(alpha, dtype=dtype)
        if up_bias and isinstance(layer, torch.nn.Linear):
            state[f"{name}.lora_up.bias"] = (torch.randn(layer.out_features, generator=generator) * 0.1).to(
                dtype
            )
    return state


def cli(capsys, *argv) -> str:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert code == 0, err[-3000:]
    return out


def _read(path):
    with safe_open(str(path), "pt") as handle:
        return load_file(str(path)), dict(handle.metadata() or {})


@pytest.fixture(scope="module")
def dit(tmp_path_factory):
    """The tiny DiT and its checkpoint (for ``--dit``)."""
    config = tiny_dit_config()
    model = build_tiny_dit(config, seed=3)
    return config, model, save_single_file(model, tmp_path_factory.mktemp("dit"))


def test_every_module_name_of_the_tiny_dit_survives_both_ways(dit):
    _, model, _ = dit
    paths = layer_paths(model)
    assert "transformer_blocks.0.ff_context.net.0.proj" in paths
    assert "single_transformer_blocks.0.attn.to_q" in paths and "x_embedder.proj" in paths
    weights = _random_lora(model)
    assert len(weights) == 3 * len(paths)
    tensors, _ = formats.to_diffusers(
        weights, paths, "lora_unet", diffusers_prefix="diffusion_model.", alpha_tensors=True
    )
    named = {re.sub(r"^diffusion_model\.|\.(lora_A\.weight|lora_B\.weight|alpha)$", "", k) for k in tensors}
    assert named == set(paths)  # the model's own names: no single.transformer.blocks, no ff.context
    back, _ = formats.tuner_file(tensors, "lora_unet")
    assert set(back) == set(weights)
    assert all(torch.equal(back[k], weights[k]) and back[k].dtype == weights[k].dtype for k in weights)


@pytest.mark.parametrize("target", ["diffusers", "other", "comfy"])
def test_cli_round_trip_is_bit_exact_with_alpha_and_metadata(dit, tmp_path, capsys, target):
    _, model, checkpoint = dit
    weights = _random_lora(model, ranks=(4, 2), alphas=(1.0, 3.0, 0.5), dtype=torch.bfloat16, up_bias=True)
    source = tmp_path / "tuner.safetensors"
    meta = {**META, "sshs_model_hash": "x", "sshs_legacy_hash": "y"}
    save_file(weights, str(source), meta)
    middle, back = tmp_path / "middle.safetensors", tmp_path / "back.safetensors"
    out = cli(
        capsys, "convert-lora", "--input", source, "--output", middle, "--target", target, "--dit", checkpoint
    )
    assert "kohya" in out and str(middle) in out
    converted, converted_meta = _read(middle)
    prefix = "transformer." if target == "diffusers" else "diffusion_model."
    assert all(k.startswith(prefix) for k in converted)
    assert any(k.endswith(".alpha") for k in converted) == (target != "diffusers")
    assert ("lora_adapter_metadata" in converted_meta) == (target == "diffusers")
    cli(capsys, "convert-lora", "--input", middle, "--output", back, "--target", "default")
    restored, restored_meta = _read(back)
    assert set(restored) == set(weights)
    for key, tensor in weights.items():
        assert restored[key].dtype == tensor.dtype and torch.equal(restored[key], tensor), key
    assert {k: v for k, v in restored_meta.items() if not k.startswith("sshs_")} == META
    from tuner_core.training.metadata import model_hashes

    expected = model_hashes(weights, META)
    assert (restored_meta["sshs_model_hash"], restored_meta["sshs_legacy_hash"]) == expected


def test_the_released_models_layers_need_no_model_file(tmp_path, capsys, dit):
    _, model, _ = dit
    weights = _random_lora(model, linear_only=True)
    source = tmp_path / "tuner.safetensors"
    save_file(weights, str(source))
    out_file = tmp_path / "comfy.safetensors"
    cli(capsys, "convert-lora", "--input", source, "--output", out_file, "--target", "other")
    assert "diffusion_model.single_transformer_blocks.1.attn.to_q.lora_A.weight" in load_file(str(out_file))


def test_what_cannot_be_converted_is_refused(tmp_path, capsys, dit):
    _, _, checkpoint = dit
    source = tmp_path / "bad.safetensors"
    save_file(
        {
            "lora_unet_blocks_9_attn_q.lora_down.weight": torch.zeros(2, 4),
            "lora_unet_blocks_9_attn_q.lora_up.weight": torch.zeros(4, 2),
        },
        str(source),
    )
    args = [
        "convert-lora",
        "--input",
        source,
        "--output",
        tmp_path / "o.safetensors",
        "--target",
        "diffusers",
    ]
    code = main([str(a) for a in [*args, "--dit", checkpoint]])
    err = capsys.readouterr().err
    assert code != 0 and "match no module of the model: lora_unet_blocks_9_attn_q" in err
    save_file({"lora_unet_x.hada_w1_a": torch.zeros(2, 2)}, str(source))
    code = main([str(a) for a in [*args, "--dit", checkpoint]])
    assert code != 0 and "LoHa" in capsys.readouterr().err
    assert not (tmp_path / "o.safetensors").exists()


# -- diffusers' own FramePack model and LoRA loading ------------------------------------------------------


@pytest.mark.parametrize("up_bias", [False, True], ids=["plain", "lora_bias"])
def test_converted_file_loads_into_diffusers_and_matches_tuners_merge(dit, tmp_path, capsys, caplog, up_bias):
    diffusers = pytest.importorskip("diffusers")
    pytest.importorskip("peft")
    from peft import get_peft_model_state_dict

    config, _, checkpoint = dit
    weights = _random_lora(
        build_tiny_dit(config, seed=3), ranks=(4, 4, 2), alphas=(1.0, 2.0), linear_only=True, up_bias=up_bias
    )
    source, converted = tmp_path / "tuner.safetensors", tmp_path / "diffusers.safetensors"
    save_file(weights, str(source), META)
    cli(
        capsys,
        "convert-lora",
        "--input",
        source,
        "--output",
        converted,
        "--target",
        "diffusers",
        "--dit",
        checkpoint,
    )

    reference = diffusers.HunyuanVideoFramepackTransformer3DModel(**config.to_dict()).eval()
    reference.load_state_dict(build_tiny_dit(config, seed=3).state_dict(), strict=True)
    pipeline = diffusers.HunyuanVideoFramepackPipeline  # what pipe.load_lora_weights(file) runs
    with caplog.at_level(logging.WARNING):
        state, adapter_metadata = pipeline.lora_state_dict(str(converted), return_lora_metadata=True)
        pipeline.load_lora_into_transformer(
            state, transformer=reference, adapter_name="tuner", metadata=adapter_metadata
        )
    assert not [r for r in caplog.records if "unexpected" in r.getMessage() or "missing" in r.getMessage()]
    loaded = get_peft_model_state_dict(reference, adapter_name="tuner")
    on_disk = load_file(str(converted))
    assert {f"transformer.{k}" for k in loaded} == set(on_disk)  # every tensor used, none missing
    assert all(torch.equal(v, on_disk[f"transformer.{k}"]) for k, v in loaded.items())

    ours = build_tiny_dit(config, seed=3)
    assert LoRANetworkType().merge_into(ours, LAYOUT, weights, 1.0) == []
    inputs = tiny_dit_inputs(config, batch=1, text_lengths=(11,))
    with torch.no_grad():
        expected = ours(**inputs)
        got = reference(**_diffusers_inputs(inputs))[0]
        base = build_tiny_dit(config, seed=3)(**inputs)
    assert (expected - base).abs().max() > 1e-2  # the LoRA changes the output
    assert (got - expected).abs().max() <= 1e-4 * expected.abs().max()
    config = json.loads(_read(converted)[1]["lora_adapter_metadata"])
    assert config["transformer.alpha_pattern"] and config["transformer.rank_pattern"]  # both patterns used


def _diffusers_inputs(inputs):
    """Our forward's inputs under diffusers' names (one index row for the batch)."""
    return {
        "hidden_states": inputs["hidden_states"],
        "timestep": inputs["timestep"],
        "encoder_hidden_states": inputs["encoder_hidden_states"],
        "encoder_attention_mask": inputs["encoder_attention_mask"],
        "pooled_projections": inputs["pooled_projections"],
        "image_embeds": inputs["image_embeddings"],
        "indices_latents": inputs["latent_indices"][0],
        "latents_clean": inputs["clean_latents"],
        "indices_latents_clean": inputs["clean_latent_indices"][0],
        "latents_history_2x": inputs["clean_latents_2x"],
        "indices_latents_history_2x": inputs["clean_latent_2x_indices"][0],
        "latents_history_4x": inputs["clean_latents_4x"],
        "indices_latents_history_4x": inputs["clean_latent_4x_indices"][0],
        "guidance": inputs["guidance"],
        "return_dict": False,
    }
