"""Metadata of saved network files as the reference writes it: hashes, model names, network module and args.

The hashes are checked against their definition (sd-webui additional-networks' ``addnet`` hashes, which the
reference precomputes): computed from the bytes of a file written with only the ``ss_*`` keys as metadata.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save, save_file

from tuner_cli.parser import build_command_options
from tuner_core.commands.run import run_command
from tuner_core.plugins import make_plugin_manager
from tuner_core.training.metadata import file_name, model_hashes, with_hashes
from tuner_toy.build import make_toy_models
from tuner_toy.sample_data import make_sample_dataset

MEBIBYTE = 0x100000


def _lora(layers: int, *, width: int = 256) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    tensors = {}
    for i in range(layers):
        tensors[f"lora_unet_blocks_{i}_attn_to_q.lora_down.weight"] = torch.randn(
            4, width, generator=generator
        )
        tensors[f"lora_unet_blocks_{i}_attn_to_q.lora_up.weight"] = torch.randn(width, 4, generator=generator)
        tensors[f"lora_unet_blocks_{i}_attn_to_q.alpha"] = torch.tensor(1.0)
    return tensors


def _addnet_hashes(path: Path) -> tuple[str, str]:
    """The definition: sha256 of everything after the header; sha256 of 64 KiB at 1 MiB, 8 hex digits."""
    data = path.read_bytes()
    header = int.from_bytes(data[:8], "little")
    return hashlib.sha256(data[8 + header :]).hexdigest(), hashlib.sha256(
        data[MEBIBYTE : MEBIBYTE + 0x10000]
    ).hexdigest()[:8]


@pytest.mark.parametrize("layers", [2, 400])  # 16 KiB and 3 MiB: the legacy hash reads from 1 MiB on
def test_hashes_are_those_of_the_file_written_with_only_its_ss_keys(tmp_path, layers):
    tensors = _lora(layers)
    metadata = {"ss_output_name": "x" * 40, "ss_seed": "1", "modelspec.title": "anything" * 30}
    reference_file = tmp_path / "ss_only.safetensors"
    save_file(tensors, str(reference_file), {k: v for k, v in metadata.items() if k.startswith("ss_")})
    assert model_hashes(tensors, metadata) == _addnet_hashes(reference_file)
    # keys other than ss_* may be edited later without changing the hashes
    assert model_hashes(tensors, {**metadata, "modelspec.title": "t"}) == model_hashes(tensors, metadata)
    without_metadata = hashlib.sha256(save(tensors)[MEBIBYTE : MEBIBYTE + 0x10000]).hexdigest()[:8]
    if layers == 400:  # the header is in front of the data: its length moves every byte after it
        assert reference_file.stat().st_size > MEBIBYTE
        assert model_hashes(tensors, metadata)[1] != without_metadata
        longer = {**metadata, "ss_seed": "1" + "0" * 16}  # (the header is padded to 8 bytes)
        assert model_hashes(tensors, longer)[1] != model_hashes(tensors, metadata)[1]


def test_hashes_are_of_the_tensors_as_saved():
    tensors = _lora(3)
    cast = {k: v.to(torch.bfloat16) for k, v in tensors.items()}
    meta = {"ss_seed": "1"}
    hashed = with_hashes(meta, tensors, "bf16")
    assert (hashed["sshs_model_hash"], hashed["sshs_legacy_hash"]) == model_hashes(cast, meta)
    assert with_hashes(meta, tensors, None)["sshs_model_hash"] == model_hashes(tensors, meta)[0]


def test_model_names_are_base_names_whatever_the_separator():
    assert file_name("/home/me/models/FramePackI2V_HY_bf16.safetensors") == "FramePackI2V_HY_bf16.safetensors"
    assert file_name(r"C:\Users\me\dit.safetensors") == "dit.safetensors"
    assert file_name(Path("/snapshots/abc123/")) == "abc123"
    assert file_name(None) is None


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy").resolve()
    dataset = make_sample_dataset(root, videos=2, frames=9, size=32)
    models = make_toy_models(root / "models")
    plugins = make_plugin_manager()
    architecture = plugins.architecture("toy")

    def run(command, values):
        options = build_command_options(command, architecture, values, {}, None, plugins.memory_strategies())
        return run_command(command, options, architecture=architecture, plugins=plugins)

    run("cache-latents", {"dataset_config": dataset, "vae": models.vae})
    run("cache-text", {"dataset_config": dataset, "text_encoder": models.text_encoder})
    values = {
        "dataset_config": dataset,
        "dit": models.dit,
        "vae": models.vae,
        "output_dir": root / "out",
        "output_name": "meta",
        "max_train_epochs": 1,
        "learning_rate": 1e-3,
        "seed": 1,
        "max_data_loader_n_workers": 0,
        "network_module": "networks.lora",
        "network_dim": 4,
        "network_args": ["loraplus_lr_ratio=2"],
    }
    run("train", values)
    run("train", {**values, "output_name": "minimum", "no_metadata": True})
    return root, models, architecture, values


def test_saved_file_metadata_is_the_references(toy):
    root, models, _, _ = toy
    path = root / "out" / "meta.safetensors"
    with safe_open(str(path), "pt") as handle:
        meta = dict(handle.metadata())
    assert meta["ss_network_module"] == "networks.lora"  # as given, not the type's own name
    assert meta["ss_network_args"] == json.dumps({"loraplus_lr_ratio": "2"})
    assert meta["ss_sd_model_name"] == models.dit.name and meta["ss_vae_name"] == models.vae.name
    assert meta["ss_training_comment"] == "None"  # the reference writes unset values as "None"
    assert "ss_training_finished_at" in meta and meta["ss_steps"] != "None"
    stored = (meta["sshs_model_hash"], meta["sshs_legacy_hash"])
    assert stored == model_hashes(load_file(str(path)), meta)


def test_no_saved_metadata_holds_an_absolute_path(toy):
    root, _, _, _ = toy
    saved = sorted((root / "out").rglob("*.safetensors"))
    assert saved
    for path in saved:
        with safe_open(str(path), "pt") as handle:
            meta = handle.metadata() or {}
        for key, value in meta.items():
            assert str(root) not in value and str(Path.home()) not in value, (path.name, key, value)
            assert not value.startswith(("/", "\\")) and ":\\" not in value, (path.name, key, value)


def test_no_metadata_keeps_the_minimum_keys_and_the_hashes(toy):
    root, _, _, _ = toy
    path = root / "out" / "minimum.safetensors"
    with safe_open(str(path), "pt") as handle:
        meta = dict(handle.metadata())
    assert {k for k in meta if not k.startswith("modelspec.")} == {
        "ss_base_model_version",
        "ss_network_module",
        "ss_network_dim",
        "ss_network_alpha",
        "ss_network_args",
        "sshs_model_hash",
        "sshs_legacy_hash",
    }
    assert meta["ss_network_module"] == "networks.lora"
    assert (meta["sshs_model_hash"], meta["sshs_legacy_hash"]) == model_hashes(load_file(str(path)), meta)
