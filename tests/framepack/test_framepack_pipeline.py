"""FramePack end to end on tiny random models saved in the real formats: cache-latents, cache-text, train."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from tuner_cli.parser import build_command_options
from tuner_core import ConfigError
from tuner_core.commands.run import run_command
from tuner_core.media.write import write_video
from tuner_core.plugins import make_plugin_manager
from tuner_framepack.testing.tiny_dit import save_tiny_dit_diffusers
from tuner_framepack.testing.tiny_encoders import (
    TINY_CLIP_SHAPE,
    TINY_LLAMA_SHAPE,
    TINY_SIGLIP_SHAPE,
    kit_dit_config,
    save_tiny_encoder_kit,
)
from tuner_toy.sample_data import square_video


def run(command, values):
    plugins = make_plugin_manager()
    arch = plugins.architecture("framepack")
    options = build_command_options(command, arch, values, {}, None, plugins.memory_strategies())
    return run_command(command, options, architecture=arch, plugins=plugins)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("framepack")
    kit = save_tiny_encoder_kit(root / "encoders")
    config = kit_dit_config()
    dit = save_tiny_dit_diffusers(root / "dit", config=config).shards[0]  # with config.json beside it
    videos = root / "videos"
    videos.mkdir()
    for name, frames in (("walk", 37), ("long", 73), ("short", 21)):
        write_video(videos / f"{name}.mp4", square_video((200, 50, 50), (1, 0), frames=frames, size=64), 30)
        (videos / f"{name}.txt").write_text(f"a red square, {name} clip")
    dataset = root / "dataset.toml"
    dataset.write_text(
        f"[general]\nresolution = [64, 64]\ncaption_extension = '.txt'\n"
        f"[[datasets]]\nvideo_directory = '{videos}'\ncache_directory = '{root / 'cache'}'\n"
        "frame_extraction = 'full'\nmax_frames = 145\n"
    )
    return {
        "root": root,
        "dataset": dataset,
        "dit": dit,
        "vae": kit.vae.snapshot,
        "image_encoder": kit.image_encoder.comfy_file,
        "text_encoder1": kit.text_encoder1.first_shard,
        "text_encoder2": kit.text_encoder2.comfy_file,
        "tokenizer2": kit.text_encoder2.tokenizer_dir,  # Comfy's file ships no tokenizer
        "cache": root / "cache",
    }


@pytest.fixture(scope="module")
def cached(workspace):
    latents = run(
        "cache-latents",
        {
            "dataset_config": workspace["dataset"],
            "vae": workspace["vae"],
            "image_encoder": workspace["image_encoder"],
        },
    )
    text = run(
        "cache-text",
        {
            "dataset_config": workspace["dataset"],
            "text_encoder1": workspace["text_encoder1"],
            "text_encoder2": workspace["text_encoder2"],
            "tokenizer2": workspace["tokenizer2"],
        },
    )
    return latents, text


def test_section_caches_have_the_reference_names_keys_and_shapes(workspace, cached):
    latents, text = cached
    assert latents.counts["encoded"] == 2 and latents.counts["skipped"] == 1  # 21 frames < one section (37)
    names = sorted(p.name for p in workspace["cache"].glob("*_fp.safetensors"))
    assert names == [
        "long_00000-073-0000_0064x0064_fp.safetensors",
        "long_00000-073-0001_0064x0064_fp.safetensors",
        "walk_00000-037-0000_0064x0064_fp.safetensors",
    ]
    with safe_open(str(workspace["cache"] / names[0]), "pt") as handle:
        keys = set(handle.keys())
        meta = handle.metadata()
        shapes = {k: tuple(handle.get_slice(k).get_shape()) for k in keys}
    assert keys == {
        "latents_9x8x8_float16",
        "latents_clean_9x8x8_float16",
        "latents_clean_2x_9x8x8_float16",
        "latents_clean_4x_9x8x8_float16",
        "image_embeddings_float16",
        "latent_indices_int64",
        "clean_latent_indices_int64",
        "clean_latent_2x_indices_int64",
        "clean_latent_4x_indices_int64",
    }
    assert shapes["latents_9x8x8_float16"] == (16, 9, 8, 8)
    assert shapes["latents_clean_4x_9x8x8_float16"] == (16, 16, 8, 8)
    assert shapes["image_embeddings_float16"] == (16, TINY_SIGLIP_SHAPE["hidden_size"])  # 56/14 = 4x4 patches
    assert (
        meta["architecture"] == "framepack"
        and meta["format_version"] == "1.0.1"
        and meta["frame_count"] == "73"
    )
    assert text.counts["encoded"] == 2
    with safe_open(str(workspace["cache"] / "walk_fp_te.safetensors"), "pt") as handle:
        shapes = {
            k: (tuple(handle.get_slice(k).get_shape()), handle.get_slice(k).get_dtype())
            for k in handle.keys()  # noqa: SIM118 - safe_open is not iterable
        }
        assert handle.metadata()["caption1"] == "a red square, walk clip"
    assert shapes == {
        "llama_vec_float16": ((512, TINY_LLAMA_SHAPE["hidden_size"]), "F16"),
        "llama_attention_mask": ((512,), "BOOL"),
        "clip_l_pooler_float16": ((TINY_CLIP_SHAPE["hidden_size"],), "F16"),
    }


def test_lora_training_on_the_caches(workspace, cached, tmp_path):
    out = tmp_path / "out"
    result = run(
        "train",
        {
            "dataset_config": workspace["dataset"],
            "dit": workspace["dit"],
            "output_dir": out,
            "output_name": "fp-lora",
            "network_module": "networks.lora_framepack",
            "network_dim": 4,
            "max_train_steps": 2,
            "learning_rate": 1e-3,
            "seed": 0,
            "max_data_loader_n_workers": 0,
            "timestep_sampling": "shift",
            "discrete_flow_shift": 3.0,
            "gradient_checkpointing": True,
        },
    )
    assert result.counts["steps"] == 2
    with safe_open(str(out / "fp-lora.safetensors"), "pt") as handle:
        keys = set(handle.keys())
        meta = handle.metadata()
    modules = {k.rsplit(".", 2)[0] for k in keys if k.endswith("lora_down.weight")}
    assert len(modules) == 2 * 12 + 2 * 5  # 12 per double block, 5 per single block, as the reference
    assert "lora_unet_transformer_blocks_0_attn_to_q" in modules
    assert "lora_unet_single_transformer_blocks_1_proj_out" in modules
    assert not any("norm" in m for m in modules)
    assert meta["ss_base_model_version"] == "framepack" and meta["modelspec.architecture"] == "framepack/lora"


def test_window_size_mismatch_between_cache_and_training_is_a_clear_error(workspace, cached, tmp_path):
    with pytest.raises(ConfigError, match=r"walk_00000-037-0000_0064x0064_fp.safetensors.*9.*5|5.*9"):
        run(
            "train",
            {
                "dataset_config": workspace["dataset"],
                "dit": workspace["dit"],
                "output_dir": tmp_path,
                "latent_window_size": 5,
                "max_train_steps": 1,
                "max_data_loader_n_workers": 0,
            },
        )


def test_section_caches_put_together_are_the_clip_latents_and_decode_like_it(workspace, cached):
    from safetensors.torch import load_file

    from tuner_core.config.dataset import load_dataset_config
    from tuner_core.data.discovery import discover_items
    from tuner_core.data.loader import load_sample
    from tuner_framepack.architecture import FramePackArchitecture
    from tuner_framepack.caching import _pixels, posterior_generator
    from tuner_framepack.encoders import load_vae, vae_decode, vae_encode

    arch = FramePackArchitecture()
    (settings,) = load_dataset_config(workspace["dataset"], arch.dataset_options).datasets
    item = next(i for i in discover_items(settings, arch.media).items if i.stem == "long")
    sample = load_sample(item, arch.media)
    vae = load_vae(workspace["vae"], dtype=torch.float32)
    direct = vae_encode(vae, _pixels(sample.pixels), posterior_generator(item, vae))[
        0
    ]  # 73 frames -> 19 latents

    sections = [
        load_file(str(workspace["cache"] / f"long_00000-073-000{i}_0064x0064_fp.safetensors")) for i in (0, 1)
    ]
    first = sections[0]["latents_clean_9x8x8_float16"][:, :1]  # the clip's frame-0 latent is clean latent 0
    targets = [s["latents_9x8x8_float16"] for s in sections]
    assembled = torch.cat([first, *targets], dim=1).float()
    assert assembled.shape == direct.shape == (16, 19, 8, 8)
    assert torch.allclose(assembled, direct.half().float())  # the caches are the clip's latents (fp16-stored)

    source = _pixels(sample.pixels)[0]
    from_cache = vae_decode(vae, assembled[None])[0].clamp(-1, 1)
    from_direct = vae_decode(vae, direct[None])[0].clamp(-1, 1)
    vae_error = (from_direct - source).abs().mean()
    assert (
        abs((from_cache - source).abs().mean() - vae_error) < 0.01 * vae_error + 1e-3
    )  # within the VAE's own error


def test_sampling_during_training_writes_videos_with_the_encoders_loaded_only_then(
    workspace, cached, tmp_path
):
    from PIL import Image

    start = tmp_path / "start.png"
    Image.fromarray(square_video((200, 50, 50), (1, 0), frames=1, size=64)[0]).save(start)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(f"a red square --i {start} --f 37 --s 2 --d 5\n")
    result = run(
        "train",
        {
            "dataset_config": workspace["dataset"],
            "dit": workspace["dit"],
            "vae": workspace["vae"],
            "image_encoder": workspace["image_encoder"],
            "text_encoder1": workspace["text_encoder1"],
            "text_encoder2": workspace["text_encoder2"],
            "tokenizer2": workspace["tokenizer2"],
            "output_dir": tmp_path / "out",
            "network_module": "lora",
            "sample_prompts": prompts,
            "sample_at_first": True,
            "max_train_steps": 1,
            "max_data_loader_n_workers": 0,
        },
    )
    samples = result.outputs["samples"]
    assert len(samples) == 1 and all(p.suffix == ".mp4" and p.stat().st_size > 0 for p in samples)
    assert (tmp_path / "out" / "sample").is_dir()


def test_a_sample_prompt_without_a_start_image_is_refused_before_training(workspace, cached, tmp_path):
    from tuner_core import ConfigError

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat --f 37\n")
    with pytest.raises(ConfigError, match="--i is required"):
        run(
            "train",
            {
                "dataset_config": workspace["dataset"],
                "dit": workspace["dit"],
                "vae": workspace["vae"],
                "image_encoder": workspace["image_encoder"],
                "text_encoder1": workspace["text_encoder1"],
                "text_encoder2": workspace["text_encoder2"],
                "tokenizer2": workspace["tokenizer2"],
                "output_dir": tmp_path,
                "sample_prompts": prompts,
                "max_train_steps": 1,
                "max_data_loader_n_workers": 0,
            },
        )
    assert not (tmp_path / "last.safetensors").exists()


def test_save_merged_model_needs_only_the_dit_and_the_lora(workspace, cached, tmp_path):
    from safetensors.torch import load_file

    from tuner_framepack.dit import load_dit

    out = tmp_path / "out"
    train = {
        "dataset_config": workspace["dataset"],
        "dit": workspace["dit"],
        "output_dir": out,
        "network_module": "lora",
        "max_train_steps": 1,
        "learning_rate": 1e-2,
        "seed": 0,
        "max_data_loader_n_workers": 0,
    }
    run("train", train)
    merged_path = tmp_path / "merged.safetensors"
    result = run(
        "generate",
        {
            "dit": workspace["dit"],
            "lora_weight": [out / "last.safetensors"],
            "save_merged_model": merged_path,
        },
    )
    assert result.outputs["merged model"] == [merged_path]
    # generate holds the DiT in bf16 (the reference's dtype) whatever the file stores: so is the merged file
    merged = load_file(str(merged_path))
    base = load_dit(workspace["dit"], dtype=torch.bfloat16).state_dict()
    assert {t.dtype for t in merged.values()} == {torch.bfloat16}
    assert merged.keys() == base.keys()
    changed = [k for k in merged if not torch.equal(merged[k], base[k])]
    assert changed and all(k.endswith(".weight") and "blocks" in k for k in changed)


@pytest.mark.parametrize(("command", "limit"), [("train", 36), ("generate", 38)])
def test_blocks_to_swap_is_checked_against_the_guide_limits_first(workspace, tmp_path, command, limit):
    broken = tmp_path / "dit.safetensors"
    broken.write_text("not a model")
    values = {"dit": broken, "blocks_to_swap": limit + 1}
    if command == "train":
        values |= {"dataset_config": workspace["dataset"], "output_dir": tmp_path / "out"}
    else:
        values |= {"save_path": tmp_path, "prompt": "x", "vae": workspace["vae"]}
    with pytest.raises(ConfigError, match=rf"--blocks_to_swap {limit + 1} is above .* \({limit}\)"):
        run(command, values)


def test_help_marks_what_is_not_available_yet(capsys):
    from tuner_cli.main import main

    assert main(["train", "--arch", "framepack", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    memory = text.split("memory options:", 1)[1]  # past the usage lines
    for flag in ("--fp8_base", "--fp8_scaled", "--fp8_fast"):  # the core's fp8 strategy acts on them
        after = memory.split(flag + " ", 1)[1][:160]  # this option's help, a sentence or two
        assert "Not available yet" not in after.split(" --", 1)[0], flag
    assert "At most 36 for --arch framepack" in text
    assert "Installed: loha (also networks.loha)" in text and "lora (also networks.lora" in text
    assert "lycoris (also lycoris.kohya)" in text
    assert "--one_frame Sample one-frame inference. Not available yet." in text
