"""The CLIP-L and SigLIP towers load from files in both spellings: names prefixed ``text_model.`` /
``vision_model.`` (every published file, transformers 4.x) and unprefixed (transformers 5 ``save_pretrained``),
and give the same caches; config.json files of either transformers major version build the same model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import CLIPTextModel, CLIPVisionConfig, CLIPVisionModel, SiglipVisionModel

from tuner_core import ModelLoadError
from tuner_framepack import caching
from tuner_framepack.encoders import (
    encode_image,
    identify_models,
    load_image_encoder,
    load_text_encoder1,
    load_text_encoder2,
    load_tokenizers,
)
from tuner_framepack.encoders.identify import CLIP_TEXT, CLIP_VISION, SIGLIP_VISION
from tuner_framepack.encoders.llama import portable_llama_config
from tuner_framepack.encoders.locate import WeightsLocation, read_config
from tuner_framepack.testing.tiny_encoders import (
    TinyEncoderKit,
    save_tiny_encoder_kit,
    tiny_clip_config,
    tiny_siglip_config,
)

F32 = torch.float32
PROMPT_IDS = torch.tensor([[764, 20, 30, 40, 765, 765, 765]])


@pytest.fixture(scope="module")
def kit(tmp_path_factory: pytest.TempPathFactory) -> TinyEncoderKit:
    return save_tiny_encoder_kit(tmp_path_factory.mktemp("encoders"))


def _frame(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (40, 64, 3), dtype=np.uint8)


def _names(path: Path) -> list[str]:
    return list(load_file(str(path)))


def test_kit_writes_both_spellings(kit: TinyEncoderKit) -> None:
    te2, ie = kit.text_encoder2, kit.image_encoder
    for prefixed, plain, prefix in (
        (te2.comfy_file, te2.unprefixed_file, "text_model."),
        (ie.comfy_file, ie.unprefixed_file, "vision_model."),
    ):
        assert all(n.startswith(prefix) for n in _names(prefixed))
        assert not any(prefix in n for n in _names(plain))
        assert sorted(n.removeprefix(prefix) for n in _names(prefixed)) == sorted(_names(plain))
    for folder in (te2.unprefixed_snapshot, ie.unprefixed_snapshot):
        assert (folder / "model.safetensors").is_file() and (folder / "config.json").is_file()


def test_each_spelling_is_identified(kit: TinyEncoderKit) -> None:
    te2, ie = kit.text_encoder2, kit.image_encoder
    for path in (te2.comfy_file, te2.unprefixed_file, te2.unprefixed_snapshot / "model.safetensors"):
        assert identify_models(_names(path)) == [CLIP_TEXT], path
    for path in (ie.comfy_file, ie.unprefixed_file, ie.unprefixed_snapshot / "model.safetensors"):
        assert identify_models(_names(path)) == [SIGLIP_VISION], path


def test_names_match_whole_components_only() -> None:
    # Prefix-less signatures must not fire on a longer name that merely contains them.
    lookalike = [
        "x_embeddings.patch_embedding.weight",
        "post_layernorm.weight_scale",
        "image_embeddings.class_embedding",
        "myembeddings.token_embedding.weight",
        "final_layer_norm.weight2",
        "patch_embedding.weight",  # a top-level patch embedding (Wan-like DiT), not SigLIP's
    ]
    assert identify_models(lookalike) == []
    nested = ["model.siglip.embeddings.patch_embedding.weight", "model.siglip.post_layernorm.weight"]
    assert identify_models(nested) == [SIGLIP_VISION]


def _text_caches(kit: TinyEncoderKit, clip_source: Path) -> dict[str, torch.Tensor]:
    """The text cache tensors of one caption with the CLIP-L from ``clip_source`` (float16, as cached)."""
    te1, te2 = kit.text_encoder1, kit.text_encoder2
    tok1, tok2 = load_tokenizers(te1.snapshot, te2.snapshot)
    models = {
        "text_encoder1": SimpleNamespace(tokenizer=tok1, model=load_text_encoder1(te1.snapshot)),
        "text_encoder2": SimpleNamespace(tokenizer=tok2, model=load_text_encoder2(clip_source)),
    }
    return caching.encode_text(["a red car drives along a coastal road"], models, None)[0]


def test_clip_spellings_give_equal_text_caches(kit: TinyEncoderKit) -> None:
    te2 = kit.text_encoder2
    sources = [
        te2.comfy_file,
        te2.snapshot,
        te2.unprefixed_file,
        te2.unprefixed_snapshot,
        te2.unprefixed_snapshot.parent,  # a re-saved pipeline snapshot: its text_encoder_2/ is found
    ]
    caches = [_text_caches(kit, source) for source in sources]
    assert any(k.startswith("clip_l_pooler") for k in caches[0])
    for source, cache in zip(sources[1:], caches[1:]):
        assert cache.keys() == caches[0].keys()
        for key in cache:
            assert torch.equal(cache[key], caches[0][key]), (source, key)


def test_siglip_spellings_give_equal_image_caches(kit: TinyEncoderKit) -> None:
    ie = kit.image_encoder
    sources = [
        ie.comfy_file,
        ie.snapshot,
        ie.unprefixed_file,
        ie.unprefixed_snapshot,
        ie.unprefixed_snapshot.parent,
    ]
    frame = _frame()
    # what the latent cache stores: encode_image(frame 0)[0] in float32
    caches = [encode_image(frame, load_image_encoder(p))[0].float() for p in sources]
    for source, cache in zip(sources[1:], caches[1:]):
        assert torch.equal(cache, caches[0]), source
    assert caches[0].shape == (16, 144)


def test_installed_transformers_save_pretrained_loads(tmp_path: Path) -> None:
    # Whatever spelling the installed transformers writes, its own save_pretrained folders load as saved.
    clip = CLIPTextModel(tiny_clip_config(766)).eval()
    clip.save_pretrained(tmp_path / "clip")
    loaded = load_text_encoder2(tmp_path / "clip", dtype=F32)
    with torch.no_grad():
        assert torch.equal(
            loaded(input_ids=PROMPT_IDS).pooler_output, clip(input_ids=PROMPT_IDS).pooler_output
        )
    siglip = SiglipVisionModel(tiny_siglip_config()).eval()
    siglip.save_pretrained(tmp_path / "siglip")
    frame = _frame(1)
    assert torch.equal(
        encode_image(frame, load_image_encoder(tmp_path / "siglip", dtype=F32)), encode_image(frame, siglip)
    )


def _clip_vision_file(path: Path, prefixed: bool) -> Path:
    config = CLIPVisionConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=1, image_size=28
    )
    tensors = {k.removeprefix("vision_model."): v for k, v in CLIPVisionModel(config).state_dict().items()}
    prefix = "vision_model." if prefixed else ""
    save_file({prefix + k: v.contiguous() for k, v in tensors.items()}, str(path))
    return path


@pytest.mark.parametrize("prefixed", [True, False], ids=["prefixed", "unprefixed"])
def test_wrong_tower_is_named_in_both_spellings(kit: TinyEncoderKit, tmp_path: Path, prefixed: bool) -> None:
    te2, ie = kit.text_encoder2, kit.image_encoder
    clip_text = te2.comfy_file if prefixed else te2.unprefixed_file
    siglip = ie.comfy_file if prefixed else ie.unprefixed_file
    clip_vision = _clip_vision_file(tmp_path / "clip_vision.safetensors", prefixed)
    assert identify_models(_names(clip_vision)) == [CLIP_VISION]
    cases = [
        (load_image_encoder, "--image_encoder", clip_text, CLIP_TEXT, SIGLIP_VISION),
        (load_image_encoder, "--image_encoder", clip_vision, CLIP_VISION, SIGLIP_VISION),
        (load_text_encoder2, "--text_encoder2", siglip, SIGLIP_VISION, CLIP_TEXT),
        (load_text_encoder2, "--text_encoder2", clip_vision, CLIP_VISION, CLIP_TEXT),
    ]
    for loader, option, path, looks_like, expected in cases:
        with pytest.raises(ModelLoadError) as err:
            loader(path, dtype=F32)
        message = str(err.value)
        assert message.startswith(f"{option} {path}: expected {expected} weights"), message
        assert f"looks like a {looks_like}." in message, message


def test_full_clip_in_both_spellings_loads_its_text_tower(kit: TinyEncoderKit, tmp_path: Path) -> None:
    # A full CLIP (both towers) names its towers in either transformers version; the vision one is dropped.
    vision = load_file(str(_clip_vision_file(tmp_path / "v.safetensors", prefixed=True)))
    full = {**load_file(str(kit.text_encoder2.comfy_file)), **vision}
    save_file(full, str(tmp_path / "clip_full.safetensors"))
    assert identify_models(full) == [CLIP_VISION, CLIP_TEXT]
    model = load_text_encoder2(tmp_path / "clip_full.safetensors", dtype=F32)
    plain = load_text_encoder2(kit.text_encoder2.unprefixed_file, dtype=F32)
    assert torch.equal(model(input_ids=PROMPT_IDS).pooler_output, plain(input_ids=PROMPT_IDS).pooler_output)


def test_portable_llama_config_reads_transformers5_rope_parameters() -> None:
    v5 = {"model_type": "llama", "rope_parameters": {"rope_type": "default", "rope_theta": 500000.0}}
    assert portable_llama_config(v5)["rope_theta"] == 500000.0
    assert portable_llama_config(v5).get("rope_scaling") is None
    scaled = {"rope_type": "llama3", "factor": 8.0, "rope_theta": 500000.0}
    out = portable_llama_config({"rope_parameters": scaled, "rope_theta": None})
    assert out["rope_theta"] == 500000.0 and out["rope_scaling"] == {"rope_type": "llama3", "factor": 8.0}
    v4 = {"model_type": "llama", "rope_theta": 1000.0}
    assert portable_llama_config(v4) == v4


def _config_style(config: dict, major: int) -> dict:
    """``config`` as transformers ``major`` writes it (the RoPE base's place, dtype key, private entries)."""
    config = {k: v for k, v in config.items() if k not in ("rope_theta", "rope_parameters", "rope_scaling")}
    config.pop("torch_dtype", None)
    config.pop("dtype", None)
    if major == 4:
        return {
            **config,
            "rope_theta": 500000.0,
            "rope_scaling": None,
            "torch_dtype": "float16",
            "_attn_implementation_autoset": True,
            "_name_or_path": "x",
        }
    return {**config, "rope_parameters": {"rope_type": "default", "rope_theta": 500000.0}, "dtype": "float16"}


def test_llama_config_json_of_either_transformers_gives_the_same_model(
    kit: TinyEncoderKit, tmp_path: Path
) -> None:
    te1 = kit.text_encoder1
    stored = json.loads((te1.first_shard.parent / "config.json").read_text())
    ids = torch.tensor([[5, 17, 42, 99, 3, 250]])
    reference = load_text_encoder1(te1.comfy_file, dtype=F32)  # config read off the shapes
    expected = reference(input_ids=ids, output_hidden_states=True).hidden_states[-3]
    for major in (4, 5):
        folder = tmp_path / f"v{major}" / "text_encoder"
        shutil.copytree(te1.first_shard.parent, folder)
        (folder / "config.json").write_text(json.dumps(_config_style(stored, major)))
        location = WeightsLocation(
            file=folder / "model.safetensors.index.json", config=folder / "config.json"
        )
        assert not any(k.startswith("_") for k in read_config(location, model_types=("llama",)))
        model = load_text_encoder1(folder.parent, dtype=F32)
        got = model(input_ids=ids, output_hidden_states=True).hidden_states[-3]
        assert torch.equal(got, expected), major
