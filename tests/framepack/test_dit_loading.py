"""load_dit: every checkpoint form, config resolution (argument > config.json > shapes > defaults), errors."""

from __future__ import annotations

import json

import pytest
import torch

from tuner_core.errors import ConfigError, ModelLoadError, NotAvailableError
from tuner_core.weights import save_safetensors
from tuner_framepack.dit import DiTConfig, HunyuanVideoTransformer3DModelPacked, load_dit
from tuner_framepack.dit.loader import infer_config_from_shapes
from tuner_framepack.testing.tiny_dit import (
    SINGLE_FILE_NAME,
    build_tiny_dit,
    save_diffusers_layout,
    save_single_file,
    tiny_dit_config,
)

CONFIG = tiny_dit_config(num_layers=3, num_single_layers=1, num_refiner_layers=1, mlp_ratio=2.0)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """One tiny model saved as a diffusers snapshot and as single files (float32 and bfloat16)."""
    model = build_tiny_dit(CONFIG, seed=5)
    root = tmp_path_factory.mktemp("dit_files")
    files = save_diffusers_layout(model, CONFIG, root / "snapshot")
    single = save_single_file(model, root / "kijai")
    single_bf16 = save_single_file(model, root / "kijai_bf16", dtype=torch.bfloat16)
    return model.state_dict(), files, single, single_bf16


def assert_same_weights(model, state):
    loaded = model.state_dict()
    assert loaded.keys() == state.keys()
    for key, value in state.items():
        assert torch.equal(loaded[key].to(value.dtype), value), key


def test_snapshot_layout_on_disk(saved):
    _, files, single, _ = saved
    assert [p.name for p in files.shards] == [
        f"diffusion_pytorch_model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)
    ]
    assert files.index.name == "diffusion_pytorch_model.safetensors.index.json"
    config = json.loads(files.config.read_text())
    assert config["_class_name"] == "HunyuanVideoTransformer3DModelPacked"
    assert config["num_layers"] == 3 and config["rope_axes_dim"] == [8, 12, 12]
    assert single.name == SINGLE_FILE_NAME


@pytest.mark.parametrize("form", ["first_shard", "last_shard", "directory", "index"])
def test_loads_every_form_of_the_shard_set(saved, form):
    state, files, _, _ = saved
    path = {
        "first_shard": files.shards[0],
        "last_shard": files.shards[-1],
        "directory": files.directory,
        "index": files.index,
    }[form]
    model = load_dit(path)
    assert isinstance(model, HunyuanVideoTransformer3DModelPacked)
    assert model.config == CONFIG  # from config.json
    assert_same_weights(model, state)
    assert not any(p.is_meta for p in model.parameters())
    assert not model.training and model.attn_mode == "sdpa"


def test_single_file_config_is_inferred_from_shapes(saved):
    state, _, single, _ = saved
    # the head dim (32) is not the 13B one, so only the RoPE split must be given
    model = load_dit(single, config={"rope_axes_dim": (8, 12, 12)})
    assert model.config == CONFIG
    assert_same_weights(model, state)


def test_shape_inference_covers_the_architecture_fields(saved):
    _, files, _, _ = saved
    from tuner_core.weights import open_checkpoint

    with open_checkpoint(files.directory) as source:
        inferred = infer_config_from_shapes(source.infos())
    for field in (
        "in_channels", "out_channels", "num_attention_heads", "attention_head_dim", "num_layers",
        "num_single_layers", "num_refiner_layers", "mlp_ratio", "patch_size", "patch_size_t",
        "guidance_embeds", "text_embed_dim", "pooled_projection_dim", "image_proj_dim",
    ):  # fmt: skip
        assert inferred[field] == getattr(CONFIG, field), field


def test_missing_rope_split_is_a_clear_error(saved):
    _, _, single, _ = saved
    with pytest.raises(ModelLoadError, match="rope_axes_dim"):
        load_dit(single)


def test_dtype_and_config_arguments(saved):
    state, files, _, single_bf16 = saved
    kept = load_dit(single_bf16, config={"rope_axes_dim": (8, 12, 12)})
    assert {p.dtype for p in kept.parameters()} == {torch.bfloat16}
    cast = load_dit(files.shards[0], dtype=torch.bfloat16, keep_dtype=lambda key: key.startswith("proj_out."))
    assert cast.transformer_blocks[0].attn.to_q.weight.dtype == torch.bfloat16
    assert cast.proj_out.weight.dtype == torch.float32
    # an explicit field wins over config.json; a DiTConfig instance sets every field
    assert load_dit(files.directory, config={"rope_theta": 100.0}).config.rope_theta == 100.0
    assert load_dit(files.directory, config=CONFIG).config == CONFIG


def test_unknown_config_field_is_rejected(saved):
    _, files, _, _ = saved
    with pytest.raises(ModelLoadError, match="num_layer"):
        load_dit(files.directory, config={"num_layer": 3})


def test_missing_shard_names_the_file(saved, tmp_path):
    _, files, _, _ = saved
    for shard in files.shards[::2]:  # copy shards 1 and 3 only
        (tmp_path / shard.name).write_bytes(shard.read_bytes())
    with pytest.raises(ModelLoadError, match=r"diffusion_pytorch_model-00002-of-00003\.safetensors"):
        load_dit(tmp_path / files.shards[0].name)


def test_wrong_shapes_name_the_keys(saved):
    _, files, _, _ = saved
    with pytest.raises(ModelLoadError) as caught:
        load_dit(files.directory, config={"text_embed_dim": 48})
    message = str(caught.value)
    assert "wrong shape" in message and "context_embedder.proj_in.weight" in message
    assert "diffusion_pytorch_model-0000" in message


def test_missing_and_unexpected_keys_name_the_file(saved, tmp_path):
    state, _, _, _ = saved
    broken = dict(state)
    del broken["norm_out.linear.bias"]
    broken["transformer_blocks.0.attn.extra.weight"] = torch.zeros(2)
    path = save_safetensors(broken, tmp_path / "broken.safetensors")
    with pytest.raises(ModelLoadError) as caught:
        load_dit(path, config={"rope_axes_dim": (8, 12, 12)})
    message = str(caught.value)
    assert "broken.safetensors" in message
    assert "1 missing" in message and "norm_out.linear.bias" in message
    assert "1 unexpected" in message and "transformer_blocks.0.attn.extra.weight" in message


def test_pickled_checkpoint_loads_without_executing_code(saved, tmp_path):
    state, _, _, _ = saved
    path = tmp_path / "framepack.pt"
    torch.save({"state_dict": {"model." + k: v for k, v in state.items()}}, path)
    from tuner_core.weights import open_checkpoint

    with open_checkpoint(path, prefix="model.") as source:
        assert set(source.infos()) == set(state)
    torch.save(state, path)
    model = load_dit(path, config={"rope_axes_dim": (8, 12, 12)})
    assert_same_weights(model, state)


def test_config_json_of_another_model_is_ignored(saved, tmp_path):
    _, _, single, _ = saved
    (tmp_path / single.name).write_bytes(single.read_bytes())
    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "SomethingElse", "num_layers": 99}))
    model = load_dit(tmp_path / single.name, config={"rope_axes_dim": (8, 12, 12)})
    assert model.config.num_layers == CONFIG.num_layers


def test_attention_backend_is_checked_before_loading(saved, monkeypatch):
    import sys

    _, files, _, _ = saved
    monkeypatch.setitem(sys.modules, "flash_attn", None)
    with pytest.raises(NotAvailableError, match="flash-attn"):
        load_dit(files.directory, attn_mode="flash")
    with pytest.raises(ConfigError, match="unknown attention backend"):
        load_dit(files.directory, attn_mode="fastest")
    assert load_dit(files.directory, attn_mode="torch", split_attn=True).transformer_blocks[0].attn.split_attn


def test_default_config_is_the_13b_model():
    config = DiTConfig()
    assert (config.inner_dim, config.mlp_dim, config.num_layers, config.num_single_layers) == (
        3072,
        12288,
        20,
        40,
    )
    with torch.device("meta"):
        model = HunyuanVideoTransformer3DModelPacked(config)
    state = model.state_dict()
    assert len(state) == 1274
    assert sum(t.numel() for t in state.values()) == 12_874_314_816
    assert state["clean_x_embedder.proj_4x.weight"].shape == (3072, 16, 4, 8, 8)
    assert state["single_transformer_blocks.39.proj_out.weight"].shape == (3072, 15360)
