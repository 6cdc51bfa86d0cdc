"""Bad encoder inputs give one clear ModelLoadError naming the option, the file and what is wrong."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from tuner_core import ModelLoadError
from tuner_framepack.encoders import (
    encode_prompt,
    identify_models,
    load_image_encoder,
    load_text_encoder1,
    load_text_encoder2,
    load_tokenizers,
    load_vae,
)
from tuner_framepack.encoders.identify import CLIP_TEXT, FRAMEPACK_DIT, HUNYUAN_VAE, LLAMA, SIGLIP_VISION
from tuner_framepack.encoders.tokenizer_files import load_tokenizer1, load_tokenizer2
from tuner_framepack.testing.tiny_encoders import TinyEncoderKit, save_tiny_encoder_kit

F32 = torch.float32


@pytest.fixture(scope="module")
def kit(tmp_path_factory: pytest.TempPathFactory) -> TinyEncoderKit:
    return save_tiny_encoder_kit(tmp_path_factory.mktemp("encoders"))


def test_each_kit_file_is_identified(kit: TinyEncoderKit) -> None:
    assert identify_models(load_file(str(kit.vae.diffusers_file))) == [HUNYUAN_VAE]
    assert identify_models(torch.load(kit.vae.original_pt, weights_only=True)["state_dict"]) == [HUNYUAN_VAE]
    assert identify_models(load_file(str(kit.text_encoder1.comfy_file))) == [LLAMA]
    assert identify_models(load_file(str(kit.text_encoder2.comfy_file))) == [CLIP_TEXT]
    assert identify_models(load_file(str(kit.image_encoder.comfy_file))) == [SIGLIP_VISION]
    assert identify_models(load_file(str(kit.text_encoder2.unprefixed_file))) == [CLIP_TEXT]
    assert identify_models(load_file(str(kit.image_encoder.unprefixed_file))) == [SIGLIP_VISION]


@pytest.mark.parametrize(
    ("loader", "option", "pick", "looks_like", "expected"),
    [
        (load_image_encoder, "--image_encoder", lambda k: k.text_encoder2.comfy_file, "CLIP-L", "SigLIP"),
        (load_text_encoder2, "--text_encoder2", lambda k: k.image_encoder.comfy_file, "SigLIP", "CLIP-L"),
        (load_vae, "--vae", lambda k: k.text_encoder1.first_shard, "LLaMA", "HunyuanVideo 3D VAE"),
        (load_text_encoder1, "--text_encoder1", lambda k: k.vae.original_pt, "HunyuanVideo 3D VAE", "LLaMA"),
    ],
)
def test_wrong_model_file_says_what_it_looks_like(kit, loader, option, pick, looks_like, expected) -> None:
    path = pick(kit)
    with pytest.raises(ModelLoadError) as err:
        loader(path, dtype=F32)
    message = str(err.value)
    assert message.startswith(f"{option} {path}")
    assert f"looks like a {looks_like}" in message
    assert f"expected {expected}" in message


def test_dit_and_unknown_files_are_described(tmp_path: Path) -> None:
    dit = tmp_path / "FramePackI2V_HY_bf16.safetensors"
    names = ["transformer_blocks.0.attn.to_q.weight", "single_transformer_blocks.0.proj_out.weight"]
    save_file({n: torch.zeros(2, 2) for n in [*names, "clean_x_embedder.proj.weight"]}, str(dit))
    with pytest.raises(ModelLoadError, match=f"looks like a {FRAMEPACK_DIT}.*Pass the HunyuanVideo 3D VAE"):
        load_vae(dit)
    odd = tmp_path / "odd.safetensors"
    save_file({"alpha": torch.zeros(1), "beta": torch.zeros(1)}, str(odd))
    with pytest.raises(ModelLoadError, match=r"unrecognised layout \(2 tensors, e.g. 'alpha', 'beta'\)"):
        load_image_encoder(odd)


def test_missing_file_and_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"^--vae .*nope\.safetensors: no such file or directory"):
        load_vae(tmp_path / "nope.safetensors")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match=r"--text_encoder1 .*empty: no weights found; looked for model"):
        load_text_encoder1(tmp_path / "empty")


def test_missing_shard_is_named(kit: TinyEncoderKit, tmp_path: Path) -> None:
    for shard in kit.text_encoder1.first_shard.parent.glob("model-0000[124]-of-00004.safetensors"):
        shutil.copy(shard, tmp_path / shard.name)
    with pytest.raises(ModelLoadError, match="model-00003-of-00004.safetensors"):
        load_text_encoder1(tmp_path / "model-00001-of-00004.safetensors")


def test_missing_and_misshapen_tensors_are_listed_with_the_file(kit: TinyEncoderKit, tmp_path: Path) -> None:
    tensors = load_file(str(kit.text_encoder1.comfy_file))
    del tensors["model.layers.1.mlp.up_proj.weight"]
    broken = tmp_path / "llava_llama3_fp16.safetensors"
    save_file(tensors, str(broken))
    with pytest.raises(ModelLoadError) as err:
        load_text_encoder1(broken, dtype=F32)
    assert str(broken) in str(err.value)
    assert "layers.1.mlp.up_proj.weight" in str(err.value) and "missing" in str(err.value)

    # config.json says one thing, a tensor another: the wrong shape is named
    snapshot = tmp_path / "snap"
    shutil.copytree(kit.vae.diffusers_file.parent, snapshot / "vae")
    vae_file = snapshot / "vae" / "diffusion_pytorch_model.safetensors"
    vae = load_file(str(vae_file))
    vae["quant_conv.bias"] = torch.zeros(7, dtype=torch.float16)
    save_file(vae, str(vae_file))
    with pytest.raises(ModelLoadError, match=r"(?s)^--vae: .*wrong shape: quant_conv.bias is \(7,\)"):
        load_vae(snapshot, dtype=F32)

    # without a config, a missing structural tensor stops the shape inference with its name
    del vae["decoder.conv_in.conv.weight"]
    lone = tmp_path / "vae_only.safetensors"
    save_file(vae, str(lone))
    with pytest.raises(ModelLoadError, match="'decoder.conv_in.conv.weight' is missing"):
        load_vae(lone, dtype=F32)


@pytest.mark.parametrize("name", ["x.ckpt", "x.pt", "pytorch_model.bin"])
def test_text_file_renamed_as_checkpoint_is_called_text(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_text("These are my notes about the VAE.\nNot weights at all.\n")
    with pytest.raises(ModelLoadError) as err:
        load_vae(path)
    message = str(err.value)
    assert message.startswith(f"--vae {path}: not a PyTorch checkpoint or safetensors file")
    assert "it starts with text 'These are my notes about the VAE.'" in message
    assert ".safetensors file, or a .pt" in message  # what to pass instead
    assert "pickled" not in message


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (b"hello, I am text\n", "it starts with text 'hello, I am text'"),
        (b"", "it is empty, 0 bytes"),
        (b"version https://git-lfs.github.com/spec/v1\noid sha256:00\nsize 9\n", "Git LFS pointer"),
        (b"<!DOCTYPE html>\n<html><body>Sign in</body></html>", "web page (HTML)"),
    ],
)
def test_bad_safetensors_file_says_what_it_is(tmp_path: Path, content: bytes, says: str) -> None:
    path = tmp_path / "clip_l.safetensors"
    path.write_bytes(content)
    with pytest.raises(ModelLoadError) as err:
        load_text_encoder2(path)
    message = str(err.value)
    assert message.startswith(f"--text_encoder2 {path}: not a safetensors file (")
    assert says in message


def test_empty_and_truncated_checkpoints(kit: TinyEncoderKit, tmp_path: Path) -> None:
    empty = tmp_path / "empty.ckpt"
    empty.touch()
    with pytest.raises(ModelLoadError, match=r"^--vae .*empty\.ckpt: not a PyTorch checkpoint .*it is empty"):
        load_vae(empty)
    cut = tmp_path / "sigclip_vision_patch14_384.safetensors"
    cut.write_bytes(kit.image_encoder.comfy_file.read_bytes()[:100])
    with pytest.raises(
        ModelLoadError, match=r"^--image_encoder .*: a truncated safetensors file.*Download it"
    ):
        load_image_encoder(cut)
    cut_pt = tmp_path / "pytorch_model.pt"
    cut_pt.write_bytes(kit.vae.original_pt.read_bytes()[:4000])
    with pytest.raises(
        ModelLoadError, match=r"^--vae .*: a damaged PyTorch checkpoint .*truncated or corrupt"
    ):
        load_vae(cut_pt)


def test_safetensors_renamed_as_checkpoint_loads(kit: TinyEncoderKit, tmp_path: Path) -> None:
    # The content decides for .ckpt/.pt names; a PyTorch file named .safetensors is told to be renamed.
    renamed = tmp_path / "vae.ckpt"
    shutil.copy(kit.vae.diffusers_file, renamed)
    reference = load_vae(kit.vae.diffusers_file, dtype=F32).state_dict()
    loaded = load_vae(renamed, dtype=F32).state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in reference.items())
    pt_named = tmp_path / "vae.safetensors"
    shutil.copy(kit.vae.original_pt, pt_named)
    with pytest.raises(
        ModelLoadError, match=r"^--vae .*: not a safetensors file \(it is a PyTorch checkpoint: rename"
    ):
        load_vae(pt_named)


class _Payload:
    """Anything that is not a tensor: loading it would need pickled code."""


def test_pt_with_pickled_objects_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "pytorch_model.pt"
    torch.save({"state_dict": {"vae.encoder.conv_in.conv.weight": torch.zeros(1)}, "x": _Payload()}, path)
    with pytest.raises(ModelLoadError, match="refusing to load"):
        load_vae(path)


def test_missing_tokenizer_says_where_to_put_it(kit: TinyEncoderKit, tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError) as err:
        load_tokenizer1(None, kit.text_encoder1.comfy_file, hub_cache_dir=tmp_path / "hub")
    message = str(err.value)
    assert "hunyuanvideo-community/HunyuanVideo" in message and "'tokenizer/'" in message
    assert "--tokenizer1" in message and str(kit.text_encoder1.comfy_file.parent / "tokenizer") in message
    with pytest.raises(ModelLoadError, match=r"--tokenizer2 .*not a tokenizer folder"):
        load_tokenizer2(tmp_path, kit.text_encoder2.comfy_file)


def test_tokenizers_are_found_beside_the_weights_or_given(kit: TinyEncoderKit) -> None:
    beside = load_tokenizers(kit.text_encoder1.first_shard, kit.text_encoder2.diffusers_file)
    given = load_tokenizers(
        kit.text_encoder1.comfy_file,
        kit.text_encoder2.comfy_file,
        tokenizer1=kit.text_encoder1.tokenizer_dir,
        tokenizer2=kit.text_encoder2.tokenizer_dir,
    )
    for a, b in zip(beside, given):
        assert a("a red car")["input_ids"] == b("a red car")["input_ids"]


def test_tokenizer_without_template_tokens_is_rejected(kit: TinyEncoderKit) -> None:
    with pytest.raises(ModelLoadError, match="does not know the LLaMA-3 template tokens"):
        load_tokenizer1(kit.text_encoder2.tokenizer_dir, kit.text_encoder1.comfy_file)


def test_tokenizer_of_another_model_is_caught_when_encoding(kit: TinyEncoderKit, tmp_path: Path) -> None:
    tensors = load_file(str(kit.text_encoder1.comfy_file))
    tensors["model.embed_tokens.weight"] = tensors["model.embed_tokens.weight"][:100].clone()
    small = tmp_path / "small_vocab.safetensors"
    save_file(tensors, str(small))
    llama = load_text_encoder1(small, dtype=F32)
    tok1, tok2 = load_tokenizers(kit.text_encoder1.snapshot, kit.text_encoder2.snapshot)
    clip = load_text_encoder2(kit.text_encoder2.comfy_file, dtype=F32)
    with pytest.raises(ModelLoadError, match="only 100 embeddings"):
        encode_prompt("a cat", tokenizer1=tok1, text_encoder1=llama, tokenizer2=tok2, text_encoder2=clip)
