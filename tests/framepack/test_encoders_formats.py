"""Every FramePack encoder loader accepts every published format and gives identical outputs across them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from tuner_framepack.encoders import (
    VAE_SCALING_FACTOR,
    encode_image,
    load_image_encoder,
    load_text_encoder1,
    load_text_encoder2,
    load_vae,
    vae_decode,
    vae_encode,
)
from tuner_framepack.testing.tiny_encoders import TinyEncoderKit, build_tiny_vae, save_tiny_encoder_kit

F32 = torch.float32


@pytest.fixture(scope="module")
def kit(tmp_path_factory: pytest.TempPathFactory) -> TinyEncoderKit:
    return save_tiny_encoder_kit(tmp_path_factory.mktemp("encoders"))


def _clip(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, 3, 5, 32, 48, generator=g) * 2 - 1


def test_vae_formats_give_identical_latents_and_frames(kit: TinyEncoderKit, tmp_path: Path) -> None:
    # Tencent's .pt without the state_dict wrapper and without the "vae." prefix must load too.
    plain_pt = tmp_path / "plain.pt"
    torch.save(load_file(str(kit.vae.diffusers_file)), plain_pt)
    sources = [kit.vae.diffusers_file, kit.vae.original_pt, kit.vae.snapshot, plain_pt]
    vaes = [load_vae(p, dtype=F32) for p in sources]
    pixels = _clip()
    latents = [vae_encode(v, pixels, torch.Generator().manual_seed(7)) for v in vaes]
    for other in latents[1:]:
        assert torch.equal(latents[0], other)
    assert latents[0].shape == (1, 16, 2, 4, 6)
    frames = [vae_decode(v, latents[0]) for v in vaes[:2]]
    assert torch.equal(frames[0], frames[1])
    assert frames[0].shape == (1, 3, 5, 32, 48)


def test_vae_weights_are_the_stored_ones_and_default_to_float16(kit: TinyEncoderKit) -> None:
    vae = load_vae(kit.vae.original_pt)  # the reference's float16
    assert {p.dtype for p in vae.parameters()} == {torch.float16}
    expected = build_tiny_vae().state_dict()
    loaded = vae.state_dict()
    assert loaded.keys() == expected.keys()
    for name, tensor in expected.items():
        assert torch.equal(loaded[name], tensor.to(torch.float16)), name
    assert vae.config.scaling_factor == VAE_SCALING_FACTOR == 0.476986


def test_vae_encode_samples_the_posterior_and_scales(kit: TinyEncoderKit) -> None:
    vae = load_vae(kit.vae.diffusers_file, dtype=F32)
    pixels = _clip(1)
    with torch.no_grad():
        posterior = vae.encode(pixels).latent_dist
        expected = posterior.sample(generator=torch.Generator().manual_seed(3)) * 0.476986
    got = vae_encode(vae, pixels, torch.Generator().manual_seed(3))
    assert torch.equal(got, expected)
    assert not torch.allclose(got, posterior.mode() * 0.476986)  # a sample, not the mode
    # decode divides by the same factor before the decoder
    with torch.no_grad():
        direct = vae.decode(got / 0.476986).sample
    assert torch.equal(vae_decode(vae, got), direct)


def test_vae_from_hub_cache_folder(kit: TinyEncoderKit, tmp_path: Path) -> None:
    repo = tmp_path / "models--hunyuanvideo-community--HunyuanVideo"
    (repo / "snapshots").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "snapshots" / "abc123").symlink_to(kit.vae.snapshot, target_is_directory=True)
    (repo / "refs" / "main").write_text("abc123")
    a, b = load_vae(repo, dtype=F32), load_vae(kit.vae.diffusers_file, dtype=F32)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_llama_formats_give_identical_hidden_states(kit: TinyEncoderKit) -> None:
    te1 = kit.text_encoder1
    index = te1.first_shard.parent / "model.safetensors.index.json"
    models = [
        load_text_encoder1(p, dtype=F32) for p in (te1.comfy_file, te1.first_shard, te1.snapshot, index)
    ]
    ids = torch.tensor([[5, 17, 42, 99, 3, 250]])
    outs = [m(input_ids=ids, output_hidden_states=True).hidden_states[-3] for m in models]
    for other in outs[1:]:
        assert torch.equal(outs[0], other)
    # the config read off the Comfy file's shapes equals the snapshot's config.json where it matters
    inferred, stored = models[0].config, models[2].config
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads"):
        assert getattr(inferred, key) == getattr(stored, key), key
    assert inferred.intermediate_size == stored.intermediate_size
    assert inferred.vocab_size == stored.vocab_size
    assert inferred.rms_norm_eps == 1e-5 and inferred.head_dim == 128


def test_llama_default_dtype_is_float16(kit: TinyEncoderKit) -> None:
    model = load_text_encoder1(kit.text_encoder1.comfy_file)
    assert {p.dtype for p in model.parameters()} == {torch.float16}


def test_clip_formats_give_identical_poolers(kit: TinyEncoderKit, tmp_path: Path) -> None:
    te2 = kit.text_encoder2
    # A Comfy-style file carrying the full CLIP's projection, logit scale and position ids still loads.
    extra = load_file(str(te2.comfy_file))
    hidden = extra["text_model.final_layer_norm.weight"].shape[0]
    extra["text_projection.weight"] = torch.zeros(hidden, hidden, dtype=torch.float16)
    extra["logit_scale"] = torch.tensor(4.6)
    extra["text_model.embeddings.position_ids"] = torch.arange(77)[None]
    save_file(extra, str(tmp_path / "clip_l_full.safetensors"))
    sources = [te2.comfy_file, te2.diffusers_file, te2.snapshot, tmp_path / "clip_l_full.safetensors"]
    models = [load_text_encoder2(p, dtype=F32) for p in sources]
    ids = torch.tensor([[764, 20, 30, 40, 765, 765, 765]])
    pooled = [m(input_ids=ids).pooler_output for m in models]
    for other in pooled[1:]:
        assert torch.equal(pooled[0], other)
    assert pooled[0].shape == (1, 128)


def test_siglip_formats_give_identical_embeddings(kit: TinyEncoderKit, tmp_path: Path) -> None:
    ie = kit.image_encoder
    # A full SigLIP checkpoint (text tower + logit scale/bias) with a prefix also loads as the vision tower.
    full = {f"siglip.{k}": v for k, v in load_file(str(ie.redux_file)).items()}
    full["siglip.text_model.embeddings.token_embedding.weight"] = torch.zeros(10, 8)
    full["logit_scale"], full["logit_bias"] = torch.tensor(1.0), torch.tensor(0.0)
    save_file(full, str(tmp_path / "siglip_full.safetensors"))
    sources = [ie.comfy_file, ie.redux_file, ie.snapshot, tmp_path / "siglip_full.safetensors"]
    models = [load_image_encoder(p, dtype=F32) for p in sources]
    frame = np.random.default_rng(0).integers(0, 256, (40, 64, 3), dtype=np.uint8)
    outs = [encode_image(frame, m) for m in models]
    for other in outs[1:]:
        assert torch.equal(outs[0], other)
    assert outs[0].shape == (1, 16, 144)  # 56 px / 14 px patches = 4x4 tokens; real model: (1, 729, 1152)


def test_siglip_preprocessing_is_bicubic_squash_and_half_normalisation(kit: TinyEncoderKit) -> None:
    model = load_image_encoder(kit.image_encoder.redux_file, dtype=F32)
    frame = np.random.default_rng(1).integers(0, 256, (40, 64, 3), dtype=np.uint8)
    resized = np.asarray(Image.fromarray(frame).resize((56, 56), Image.BICUBIC), dtype=np.float32)
    pixels = torch.from_numpy((resized / 255.0 - 0.5) / 0.5).permute(2, 0, 1)[None]
    with torch.no_grad():
        expected = model(pixel_values=pixels).last_hidden_state
    torch.testing.assert_close(encode_image(frame, model), expected, atol=1e-5, rtol=1e-5)
