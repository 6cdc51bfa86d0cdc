"""The four commands on the toy architecture, through the real CLI, plus what a run leaves behind."""

from __future__ import annotations

import av
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from tuner_cli.main import main

from .helpers import cache_all, run, train_values


def cli(capsys, *argv) -> str:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert code == 0, err[-3000:]
    return out


def test_cache_train_generate_through_the_cli(toy, tmp_path, capsys):
    out = cli(capsys, "cache-latents", "--arch", "toy", "--dataset_config", toy.dataset, "--vae", toy.vae)
    assert "encoded: 6" in out
    out = cli(
        capsys,
        "cache-text",
        "--arch",
        "toy",
        "--dataset_config",
        toy.dataset,
        "--text_encoder",
        toy.text_encoder,
    )
    assert "encoded: 6" in out
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# comment\na red square moving left --w 32 --h 32 --f 9 --s 3 --d 5\n")
    output = tmp_path / "out"
    out = cli(
        capsys,
        "train",
        "--arch",
        "toy",
        "--dataset_config",
        toy.dataset,
        "--dit",
        toy.dit,
        "--vae",
        toy.vae,
        "--text_encoder",
        toy.text_encoder,
        "--output_dir",
        output,
        "--output_name",
        "toy-lora",
        "--network_module",
        "networks.lora",
        "--network_dim",
        "4",
        "--max_train_epochs",
        "2",
        "--learning_rate",
        "1e-3",
        "--max_data_loader_n_workers",
        "0",
        "--seed",
        "1",
        "--sample_prompts",
        prompts,
        "--sample_every_n_epochs",
        "1",
        "--save_every_n_epochs",
        "1",
        "--logging_dir",
        tmp_path / "logs",
    )
    assert "train: steps: 6, epochs: 2" in out
    weights = output / "toy-lora.safetensors"
    assert weights.is_file() and (output / "toy-lora-000001.safetensors").is_file()
    assert (output / "toy-lora_loss.png").is_file()
    samples = sorted((output / "sample").glob("toy-lora_e000001_00_*_5.mp4"))
    assert samples, list((output / "sample").iterdir())
    with av.open(str(samples[0])) as container:
        frames = [f for f in container.decode(video=0)]
    assert len(frames) == 9 and frames[0].width == 32
    assert list((tmp_path / "logs").rglob("events.out.tfevents.*"))

    tensors = load_file(str(weights))
    assert "lora_unet_blocks_0_attn_to_q.lora_down.weight" in tensors
    assert not any("norm1_linear" in k for k in tensors)  # excluded by the layout
    with safe_open(str(weights), "pt") as handle:
        meta = handle.metadata()
    assert meta["ss_base_model_version"] == "toy" and meta["ss_network_dim"] == "4"
    assert meta["ss_steps"] == "6" and "sshs_model_hash" in meta and meta["ss_seed"] == "1"

    out = cli(
        capsys,
        "generate",
        "--arch",
        "toy",
        "--dit",
        toy.dit,
        "--vae",
        toy.vae,
        "--text_encoder",
        toy.text_encoder,
        "--prompt",
        "a red square",
        "--video_size",
        "32",
        "32",
        "--video_frames",
        "9",
        "--infer_steps",
        "3",
        "--seed",
        "11",
        "--save_path",
        tmp_path / "gen",
        "--lora_weight",
        weights,
        "--lora_multiplier",
        "0.5",
    )
    (video,) = (tmp_path / "gen").glob("*_11.mp4")
    with av.open(str(video)) as container:
        assert len(list(container.decode(video=0))) == 9


def test_lora_merge_changes_generation_and_multiplier_zero_does_not(toy, tmp_path):
    cache_all(toy)
    run("train", train_values(toy, tmp_path / "out", max_train_steps=6, learning_rate=5e-2))
    base = {
        "dit": toy.dit,
        "vae": toy.vae,
        "text_encoder": toy.text_encoder,
        "prompt": "a red square",
        "video_size": [32, 32],
        "video_frames": 5,
        "infer_steps": 2,
        "seed": 1,
        "output_type": "images",
    }
    plain = run("generate", {**base, "save_path": tmp_path / "plain"}).outputs["images"]
    zero = run(
        "generate",
        {
            **base,
            "save_path": tmp_path / "zero",
            "lora_weight": [tmp_path / "out" / "last.safetensors"],
            "lora_multiplier": [0.0],
        },
    ).outputs["images"]
    full = run(
        "generate",
        {**base, "save_path": tmp_path / "full", "lora_weight": [tmp_path / "out" / "last.safetensors"]},
    ).outputs["images"]
    assert [p.read_bytes() for p in plain] == [p.read_bytes() for p in zero]
    assert [p.read_bytes() for p in plain] != [p.read_bytes() for p in full]


def test_full_finetune_and_retention(toy, tmp_path):
    cache_all(toy)
    out = tmp_path / "ft"
    run(
        "train",
        train_values(
            toy,
            out,
            network_module=None,
            max_train_steps=7,
            save_every_n_steps=2,
            save_last_n_steps=4,
            save_state=True,
            save_last_n_steps_state=2,
        ),
    )
    names = sorted(p.name for p in out.iterdir())
    assert sorted(n for n in names if n.endswith(".safetensors")) == [
        "last-step00000004.safetensors",
        "last-step00000006.safetensors",
        "last.safetensors",
    ]
    assert sorted(n for n in names if n.endswith("-state")) == ["last-state", "last-step00000006-state"]
    trained, initial = load_file(str(out / "last.safetensors")), load_file(str(toy.dit))
    assert trained.keys() == initial.keys()
    assert not torch.equal(trained["blocks.0.attn.to_q.weight"], initial["blocks.0.attn.to_q.weight"])


def test_gradient_checkpointing_gives_the_same_weights(toy, tmp_path):
    cache_all(toy)
    run("train", train_values(toy, tmp_path / "plain", max_train_steps=3))
    run("train", train_values(toy, tmp_path / "gc", max_train_steps=3, gradient_checkpointing=True))
    a, b = (
        load_file(str(tmp_path / "plain" / "last.safetensors")),
        load_file(str(tmp_path / "gc" / "last.safetensors")),
    )
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_unreadable_cache_is_reported_and_skipped(toy, tmp_path, caplog):
    cache_all(toy)
    broken = sorted(toy.cache.glob("*_toy.safetensors"))[0]
    broken.write_bytes(broken.read_bytes()[:100])
    result = run("train", train_values(toy, tmp_path / "out", max_train_steps=2))
    assert result.counts["steps"] == 2
    assert f"skipping unreadable cache {broken}" in caplog.text


def test_nothing_to_train_on_is_a_clear_error(toy, tmp_path):
    from tuner_core import DataError

    with pytest.raises(DataError, match="no cached item to train on; run `tuner cache-latents`"):
        run("train", train_values(toy, tmp_path / "out", max_train_steps=2))


def test_mismatched_text_cache_is_skipped(toy, tmp_path, caplog):
    cache_all(toy)
    text = sorted(toy.cache.glob("*_toy_te.safetensors"))[0]
    text.unlink()
    run("train", train_values(toy, tmp_path / "out", max_train_steps=1))
    assert "its text cache" in caplog.text and "is missing" in caplog.text


def test_memory_options_without_a_strategy_are_refused_not_ignored(toy, tmp_path):
    from tuner_core import NotAvailableError

    with pytest.raises(NotAvailableError, match="--blocks_to_swap"):
        run("train", train_values(toy, tmp_path / "out", blocks_to_swap=2))
    assert not list(tmp_path.glob("*.mp4"))


def test_fp8_scaled_acts_on_the_toy_through_its_layout(toy, tmp_path):
    """The core's fp8 strategy needs nothing from an architecture but its layout (the toy's blocks)."""
    base = {"dit": toy.dit, "vae": toy.vae, "text_encoder": toy.text_encoder, "prompt": "x", "seed": 1}
    plain = run("generate", {**base, "save_path": tmp_path / "plain", "output_type": "latent"})
    fp8 = run(
        "generate", {**base, "save_path": tmp_path / "fp8", "output_type": "latent", "fp8_scaled": True}
    )
    (a,), (b,) = plain.outputs["latent"], fp8.outputs["latent"]
    a, b = load_file(str(a))["latent"], load_file(str(b))["latent"]
    assert (
        not torch.equal(a, b)
        and torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0) > 0.99
    )


def test_toy_demo_stays_available_with_arch_toy(tmp_path, capsys):
    out = cli(capsys, "demo", "--arch", "toy", "--quick", "--output_dir", tmp_path)
    summary = out.split("What the demo made:", 1)[1]
    for kind, path in (
        ("video", "generated"),
        ("weights", "output/toy.safetensors"),
        ("loss plot", "output"),
    ):
        assert f"  {kind}" in summary and str(tmp_path / path) in summary
    assert "first loss" in out and "test-suite's small flow-matching model" in summary
