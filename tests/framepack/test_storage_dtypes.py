"""The dtypes FramePack's components are held in: the DiT in bf16 (as the reference) unless --dit_dtype says
otherwise or the whole DiT is trained, the encoders in fp16 on a GPU; one log line says them."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tuner_cli.parser import build_command_options
from tuner_core import ConfigError
from tuner_core.commands.run import run_command
from tuner_core.media.write import write_video
from tuner_core.plugins import make_plugin_manager
from tuner_core.training.model_setup import prepare_model
from tuner_framepack.components import component_dtypes, dit_dtype, encoder_dtype, load_component
from tuner_framepack.dit import load_dit
from tuner_framepack.testing.tiny_dit import (
    build_tiny_dit,
    save_tiny_dit_diffusers,
    tiny_dit_config,
    tiny_dit_inputs,
)
from tuner_framepack.testing.tiny_encoders import (
    kit_dit_config,
    save_tiny_encoder_kit,
)
from tuner_toy.sample_data import square_video

CPU = torch.device("cpu")


def options_for(command, values):
    plugins = make_plugin_manager()
    arch = plugins.architecture("framepack")
    return build_command_options(command, arch, values, {}, None, plugins.memory_strategies()), arch, plugins


def run(command, values):
    options, arch, plugins = options_for(command, values)
    return run_command(command, options, architecture=arch, plugins=plugins)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("dtypes")
    kit = save_tiny_encoder_kit(root / "encoders")
    config = kit_dit_config()
    videos = root / "videos"
    videos.mkdir()
    write_video(videos / "walk.mp4", square_video((200, 50, 50), (1, 0), frames=37, size=64), 30)
    (videos / "walk.txt").write_text("a red square")
    dataset = root / "dataset.toml"
    dataset.write_text(
        f"[general]\nresolution = [64, 64]\ncaption_extension = '.txt'\n"
        f"[[datasets]]\nvideo_directory = '{videos}'\ncache_directory = '{root / 'cache'}'\nframe_extraction = 'full'\nmax_frames = 145\n"
    )
    paths = {
        "root": root,
        "dataset": dataset,
        "dit": save_tiny_dit_diffusers(root / "dit", config=config).shards[0],
        "vae": kit.vae.snapshot,
        "image_encoder": kit.image_encoder.comfy_file,
        "text_encoder1": kit.text_encoder1.first_shard,
        "text_encoder2": kit.text_encoder2.comfy_file,
        "tokenizer2": kit.text_encoder2.tokenizer_dir,
    }
    run(
        "cache-latents",
        {"dataset_config": dataset, "vae": paths["vae"], "image_encoder": paths["image_encoder"]},
    )
    text = ("text_encoder1", "text_encoder2", "tokenizer2")
    run("cache-text", {"dataset_config": dataset, **{k: paths[k] for k in text}})
    return paths


def train_values(workspace, out, **extra):
    return {
        "dataset_config": workspace["dataset"],
        "dit": workspace["dit"],
        "output_dir": out,
        "max_train_steps": 1,
        "learning_rate": 1e-2,
        "seed": 0,
        "max_data_loader_n_workers": 0,
        **extra,
    }


def generate_options(workspace, **values):
    values = {"save_path": workspace["root"] / "generated", "prompt": "a red square", **values}
    return options_for("generate", values)[0]


LORA = {"network_module": "lora"}


@pytest.mark.parametrize("precision", ["no", "bf16", "fp16"])
def test_the_dit_is_bf16_for_lora_training_whatever_mixed_precision_says(workspace, tmp_path, precision):
    options, _, _ = options_for("train", train_values(workspace, tmp_path, mixed_precision=precision, **LORA))
    assert dit_dtype(options) == torch.bfloat16


@pytest.mark.parametrize("choice", ["bfloat16", "float16", "float32"])
def test_dit_dtype_chooses_another(workspace, tmp_path, choice):
    train, _, _ = options_for("train", train_values(workspace, tmp_path, dit_dtype=choice, **LORA))
    full, _, _ = options_for("train", train_values(workspace, tmp_path, dit_dtype=choice))
    generate = generate_options(workspace, dit=workspace["dit"], dit_dtype=choice)
    assert dit_dtype(train) == dit_dtype(full) == dit_dtype(generate) == getattr(torch, choice)


def test_generation_holds_the_dit_in_bf16_and_full_fine_tuning_in_fp32(workspace, tmp_path):
    generate = generate_options(workspace, dit=workspace["dit"])
    full, _, _ = options_for("train", train_values(workspace, tmp_path))
    assert dit_dtype(generate) == torch.bfloat16
    assert dit_dtype(full) == torch.float32


def test_a_dtype_that_does_not_exist_is_refused(workspace, tmp_path):
    with pytest.raises(ConfigError, match="dit_dtype"):
        options_for("train", train_values(workspace, tmp_path, dit_dtype="float8"))


def test_encoders_are_fp16_on_a_gpu_and_fp32_on_the_cpu(workspace):
    generate = generate_options(workspace, **{k: workspace[k] for k in ("dit", "vae", "text_encoder1")})
    assert encoder_dtype(torch.device("cuda")) == torch.float16 and encoder_dtype(CPU) == torch.float32
    assert component_dtypes(generate, torch.device("cuda")) == {
        "dit": torch.bfloat16,
        "vae": torch.float16,
        "text_encoder1": torch.float16,
    }


def test_the_dtypes_are_logged_once_per_command(workspace, caplog):
    values = {k: workspace[k] for k in ("dit", "vae", "image_encoder", "text_encoder1", "text_encoder2")}
    generate = generate_options(workspace, **values, tokenizer2=workspace["tokenizer2"], fp8_llm=True)
    with caplog.at_level(logging.INFO, logger="tuner_framepack.components"):
        dit = load_component("dit", generate, CPU)
        vae = load_component("vae", generate, CPU)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("dtypes")]
    assert lines == [
        "dtypes on cpu: DiT bfloat16, VAE float32, SigLIP float32, LLaMA float32 (fp8 weights), CLIP float32"
    ]
    assert {p.dtype for p in dit.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in vae.parameters()} == {torch.float32}


def test_lora_training_keeps_bf16_storage_and_fp32_adapters(workspace, tmp_path, caplog):
    options, arch, plugins = options_for("train", train_values(workspace, tmp_path / "a", **LORA))
    prepared = prepare_model(options, arch, plugins, CPU)
    assert {p.dtype for p in prepared.step.model.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in prepared.step.network.parameters()} == {torch.float32}
    with caplog.at_level(logging.INFO, logger="tuner_framepack.components"):
        result = run("train", train_values(workspace, tmp_path / "b", **LORA))  # --mixed_precision no
    assert result.counts["steps"] == 1 and "dtypes on cpu: DiT bfloat16" in caplog.text
    lora = load_file(str(tmp_path / "b" / "last.safetensors"))
    assert all(torch.isfinite(t).all() for t in lora.values())


def test_full_fine_tuning_trains_fp32_weights_by_default(workspace, tmp_path):
    options, arch, plugins = options_for("train", train_values(workspace, tmp_path))
    prepared = prepare_model(options, arch, plugins, CPU)
    trained = [p for group in prepared.param_groups for p in group["params"]]
    assert trained and {p.dtype for p in trained} == {torch.float32}


def test_full_fine_tuning_in_bf16_storage_trains_and_warns(workspace, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="tuner_framepack.components"):
        result = run("train", train_values(workspace, tmp_path, dit_dtype="bfloat16", save_precision="bf16"))
    assert result.counts["steps"] == 1
    assert "full fine-tuning with --dit_dtype bfloat16: the optimizer updates bfloat16 weights" in caplog.text
    trained = load_file(str(tmp_path / "last.safetensors"))
    base = load_dit(workspace["dit"], dtype=torch.bfloat16).state_dict()
    assert trained.keys() == base.keys()
    assert any(not torch.equal(trained[k], base[k]) for k in trained if "blocks" in k)


def test_fp16_weights_with_fp16_mixed_precision_cannot_train_the_whole_dit(workspace, tmp_path):
    values = train_values(workspace, tmp_path, dit_dtype="float16", mixed_precision="fp16")
    with pytest.raises(ConfigError, match="gradient scaler refuses float16 gradients"):
        run("train", values)


def test_the_fp32_output_head_of_a_sample_leaves_training_in_bf16():
    config = tiny_dit_config()
    model = build_tiny_dit(config, seed=3).to(torch.bfloat16)
    inputs = {
        k: v.to(torch.bfloat16) if v.is_floating_point() else v
        for k, v in tiny_dit_inputs(config, batch=1, text_lengths=(8,)).items()
    }
    before = model.proj_out.weight.detach().clone()
    model.fp32_proj_out = True  # what sampling during training does
    with torch.no_grad():
        assert model(**inputs).dtype == torch.float32
    model.fp32_proj_out = False
    assert model.proj_out.weight.dtype == torch.bfloat16 and torch.equal(model.proj_out.weight, before)
    assert model(**inputs).dtype == torch.bfloat16
