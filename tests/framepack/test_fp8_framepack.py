"""fp8 block weights on the FramePack DiT: the 440 reference layers, loading through the real loader,
accuracy and memory, LoRA training on an fp8 base, and --save_merged_model in the reference's format."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from tuner_cli.parser import build_command_options
from tuner_core.commands.run import run_command
from tuner_core.media.write import write_video
from tuner_core.memory.apply import apply_memory_strategies, load_transform
from tuner_core.memory.fp8 import quantisable_names
from tuner_core.memory.fp8_format import FP8_DTYPE, scale_key
from tuner_core.memory.fp8_linear import Fp8Linear
from tuner_core.memory.strategy import MemorySettings
from tuner_core.plugins import make_plugin_manager
from tuner_core.training.model_setup import prepare_model
from tuner_framepack.architecture import FramePackArchitecture
from tuner_framepack.dit import DiTConfig, HunyuanVideoTransformer3DModelPacked, load_dit
from tuner_framepack.testing.tiny_dit import (
    build_tiny_dit,
    save_diffusers_layout,
    save_tiny_dit_diffusers,
    tiny_dit_config,
    tiny_dit_inputs,
)
from tuner_framepack.testing.tiny_encoders import (
    kit_dit_config,
    save_tiny_encoder_kit,
)
from tuner_framepack.testing.tiny_memory import peak_memory
from tuner_lora.lora_network import target_layers
from tuner_toy.sample_data import square_video

LAYOUT = FramePackArchitecture.layout
CONFIG = tiny_dit_config()
ROPE = {"rope_axes_dim": CONFIG.rope_axes_dim}


def plugins_and_arch():
    plugins = make_plugin_manager()
    return plugins, plugins.architecture("framepack")


def options(command: str, values: dict):
    plugins, arch = plugins_and_arch()
    return build_command_options(command, arch, values, {}, None, plugins.memory_strategies())


def run(command: str, values: dict):
    plugins, arch = plugins_and_arch()
    return run_command(command, options(command, values), architecture=arch, plugins=plugins)


def load(path: Path, *, scaled: bool | None, dtype=torch.float32) -> nn.Module:
    """The DiT through the real loader with the registered strategies (``scaled=None``: no fp8)."""
    plugins, _ = plugins_and_arch()
    settings = MemorySettings(fp8_base=scaled is not None, fp8_scaled=bool(scaled))
    transform = load_transform(LAYOUT, settings, plugins)
    model = load_dit(path, config=ROPE, dtype=dtype, transform=transform)
    apply_memory_strategies(model, LAYOUT, settings, plugins, torch.device("cpu"))
    return model


def weight_bytes(model: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


def relative_error(approx: torch.Tensor, exact: torch.Tensor) -> float:
    return ((approx.float() - exact.float()).norm() / exact.float().norm()).item()


@pytest.fixture(scope="module")
def dit_file(tmp_path_factory) -> Path:
    """The tiny DiT stored in bf16 as a diffusers snapshot (its config.json beside it)."""
    model = build_tiny_dit(CONFIG).to(torch.bfloat16)
    return save_diffusers_layout(model, CONFIG, tmp_path_factory.mktemp("fp8_dit"), num_shards=2).shards[0]


def test_the_real_13b_model_quantises_the_440_layers_lora_targets():
    with torch.device("meta"):
        model = HunyuanVideoTransformer3DModelPacked(DiTConfig())
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    names = quantisable_names(shapes, LAYOUT)
    lora = {path + ".weight" for path, _ in target_layers(model, LAYOUT, {})}
    assert len(names) == 440 and set(names) == lora
    quantised = sum(math.prod(shapes[n]) for n in names)
    total = sum(math.prod(s) for s in shapes.values())
    # bf16 -> fp8 + bf16 block scales (1/64); the rest (embedders, AdaLN modulation, refiner) stays bf16.
    fp8_bytes = quantised * (1 + 2 / 64) + 2 * (total - quantised)
    assert quantised == pytest.approx(9.06e9, rel=0.01) and total == pytest.approx(12.87e9, rel=0.01)
    assert fp8_bytes / (2 * total) == pytest.approx(0.659, abs=0.005)


@pytest.mark.parametrize("scaled", [True, False])
def test_the_tiny_dit_loaded_in_fp8_holds_fp8_in_exactly_the_lora_layers_and_stays_close(dit_file, scaled):
    reference = load(dit_file, scaled=None)
    model = load(dit_file, scaled=scaled)
    fp8 = {n for n, p in model.named_parameters() if p.dtype == FP8_DTYPE}
    layers = {n for n, m in model.named_modules() if isinstance(m, Fp8Linear)}
    lora = {path for path, _ in target_layers(model, LAYOUT, {})}
    assert len(layers) == 2 * 12 + 2 * 5 and layers == lora and fp8 == {f"{p}.weight" for p in lora}
    scales = {k for k in model.state_dict() if k.endswith(".scale_weight")}
    assert scales == ({scale_key(n) for n in fp8} if scaled else set())
    inputs = tiny_dit_inputs(CONFIG)
    with torch.no_grad():
        exact, approx = reference(**inputs), model(**inputs)
    cosine = torch.nn.functional.cosine_similarity(exact.flatten(), approx.flatten(), dim=0).item()
    error = relative_error(approx, exact)
    print(f"fp8 {'scaled' if scaled else 'plain'}: relative error {error:.4f}, cosine {cosine:.5f}")
    assert cosine >= 0.999 and error < 0.05


def test_fp8_scaled_halves_the_quantised_weights_and_streams_without_a_bf16_copy(dit_file):
    bf16 = load(dit_file, scaled=None, dtype=torch.bfloat16)
    peak, fp8 = peak_memory(lambda: load(dit_file, scaled=True, dtype=torch.bfloat16))
    names = quantisable_names({k: tuple(v.shape) for k, v in bf16.state_dict().items()}, LAYOUT)
    state = fp8.state_dict()
    quantised_bf16 = sum(bf16.state_dict()[n].numel() * 2 for n in names)
    quantised_fp8 = sum(state[n].numel() + state[scale_key(n)].numel() * 2 for n in names)
    assert quantised_fp8 / quantised_bf16 == pytest.approx((1 + 2 / 64) / 2, abs=1e-3)  # 0.516
    whole = weight_bytes(fp8) / weight_bytes(bf16)
    # One tensor's working set while it is quantised: bf16 in, float32 copy, |w|, w / scale, fp8 out.
    one_tensor = 16 * max(t.numel() for t in bf16.state_dict().values())
    print(
        f"fp8-scaled / bf16 bytes: quantised layers {quantised_fp8 / quantised_bf16:.3f}, whole tiny DiT "
        f"{whole:.3f} (its embedders dominate); load peak {peak / weight_bytes(bf16):.3f} of the bf16 model"
    )
    assert whole < 0.9
    assert peak < weight_bytes(fp8) + one_tensor  # the model as it ends up, plus one tensor at a time


def test_streaming_onto_the_compute_device_keeps_host_memory_to_one_tensor(dit_file):
    # Loading for a GPU: each tensor is read into host memory, moved, and quantised there. The meta device
    # stands in for the GPU (it holds no memory), so what the profiler sees is the host's share alone.
    plugins, _ = plugins_and_arch()
    bf16 = load(dit_file, scaled=None, dtype=torch.bfloat16)
    transform = load_transform(LAYOUT, MemorySettings(fp8_base=True, fp8_scaled=True), plugins)
    peak, model = peak_memory(
        lambda: load_dit(dit_file, config=ROPE, dtype=torch.bfloat16, transform=transform, device="meta")
    )
    assert any(k.endswith(".scale_weight") for k in model.state_dict())
    largest = max(t.numel() * t.element_size() for t in bf16.state_dict().values())
    print(f"host peak streaming fp8-scaled onto the compute device: {peak / weight_bytes(bf16):.3f} of bf16")
    assert peak < 0.6 * weight_bytes(bf16)  # the bound; in fact about one tensor:
    assert peak <= 4 * largest  # the stored tensor and its bf16 cast, at most, at any time


def test_a_saved_fp8_model_loads_back_as_it_is_and_in_the_references_way(dit_file, tmp_path):
    merged = tmp_path / "merged_fp8.safetensors"
    result = run("generate", {"dit": dit_file, "fp8_scaled": True, "save_merged_model": merged})
    assert result.outputs["merged model"] == [merged]
    stored = load_file(str(merged))
    scales = {k: v for k, v in stored.items() if k.endswith(".scale_weight")}
    with torch.device("meta"):
        fresh = HunyuanVideoTransformer3DModelPacked(CONFIG)
    lora = {path for path, _ in target_layers(fresh, LAYOUT, {})}
    assert {k.removesuffix(".scale_weight") for k in scales} == lora
    for key, scale in scales.items():
        weight = stored[key.replace(".scale_weight", ".weight")]
        assert weight.dtype == FP8_DTYPE and scale.shape == (weight.shape[0], weight.shape[1] // 64, 1)
    # The reference's recipe: a scale_weight buffer on each Linear named in the file, then a strict load.
    for name, module in fresh.named_modules():
        if name + ".scale_weight" in scales:
            assert isinstance(module, nn.Linear)
            module.register_buffer("scale_weight", torch.ones(scales[name + ".scale_weight"].shape))
    missing, unexpected = fresh.load_state_dict(stored, strict=True, assign=True)
    assert not missing and not unexpected
    # tuner itself uses the stored fp8 weights as they are: the same tensors, bit for bit.
    again = load(merged, scaled=True)
    for key, tensor in stored.items():
        if tensor.dtype != FP8_DTYPE and key not in scales:
            continue  # the rest is cast to the dtype asked for
        loaded = again.state_dict()[key]
        assert loaded.dtype == tensor.dtype and torch.equal(
            loaded.view(torch.uint8), tensor.view(torch.uint8)
        )


def test_one_lora_step_on_an_fp8_base_trains_only_the_lora(dit_file, tmp_path):
    plugins, arch = plugins_and_arch()
    train = options(
        "train",
        {
            "dataset_config": tmp_path / "unused.toml",
            "dit": dit_file,
            "output_dir": tmp_path,
            "network_module": "lora",
            "fp8_base": True,
            "fp8_scaled": True,
            "gradient_checkpointing": True,
        },
    )
    prepared = prepare_model(train, arch, plugins, torch.device("cpu"))
    model, network = prepared.step.model, prepared.step.network
    base = {k: v.clone() for k, v in model.state_dict().items()}
    lora = {k: v.clone() for k, v in network.state_dict().items()}
    optimizer = torch.optim.AdamW([p for g in prepared.param_groups for p in g["params"]], lr=1e-2)
    inputs = tiny_dit_inputs(CONFIG, dtype=model.x_embedder.proj.weight.dtype)
    for _ in range(2):
        loss = model(**inputs).float().square().mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert torch.isfinite(loss)
    assert all(p.grad is None for p in model.parameters())
    assert all(
        torch.equal(v.view(torch.uint8), base[k].view(torch.uint8)) for k, v in model.state_dict().items()
    )
    changed = [k for k, v in network.state_dict().items() if not torch.equal(v, lora[k])]
    assert changed and all(v.dtype == torch.float32 for v in network.state_dict().values())
    assert {p.dtype for p in network.parameters()} == {torch.float32}


@pytest.fixture(scope="module")
def kit(tmp_path_factory) -> dict[str, Path]:
    """The tiny encoders, a tiny DiT fitting them, and one cached 37-frame clip."""
    root = tmp_path_factory.mktemp("fp8_train")
    encoders = save_tiny_encoder_kit(root / "encoders")
    config = kit_dit_config()
    dit = save_tiny_dit_diffusers(root / "dit", config=config).shards[0]
    videos = root / "videos"
    videos.mkdir()
    write_video(videos / "walk.mp4", square_video((200, 50, 50), (1, 0), frames=37, size=64), 30)
    (videos / "walk.txt").write_text("a red square")
    dataset = root / "dataset.toml"
    dataset.write_text(
        f"[general]\nresolution = [64, 64]\ncaption_extension = '.txt'\n"
        f"[[datasets]]\nvideo_directory = '{videos}'\ncache_directory = '{root / 'cache'}'\n"
        "frame_extraction = 'full'\nmax_frames = 37\n"
    )
    run(
        "cache-latents",
        {
            "dataset_config": dataset,
            "vae": encoders.vae.snapshot,
            "image_encoder": encoders.image_encoder.comfy_file,
        },
    )
    run(
        "cache-text",
        {
            "dataset_config": dataset,
            "text_encoder1": encoders.text_encoder1.first_shard,
            "text_encoder2": encoders.text_encoder2.comfy_file,
            "tokenizer2": encoders.text_encoder2.tokenizer_dir,
        },
    )
    start = root / "start.png"
    Image.fromarray(square_video((200, 50, 50), (1, 0), frames=1, size=48)[0]).save(start)
    models = {
        "dit": dit,
        "vae": encoders.vae.snapshot,
        "image_encoder": encoders.image_encoder.comfy_file,
        "text_encoder1": encoders.text_encoder1.first_shard,
        "text_encoder2": encoders.text_encoder2.comfy_file,
        "tokenizer2": encoders.text_encoder2.tokenizer_dir,
    }
    return {"dataset": dataset, "dit": dit, "models": models, "start": start}


def test_tuner_train_runs_lora_on_an_fp8_scaled_base(kit, tmp_path):
    result = run(
        "train",
        {
            "dataset_config": kit["dataset"],
            "dit": kit["dit"],
            "output_dir": tmp_path,
            "output_name": "fp8-lora",
            "network_module": "lora",
            "fp8_base": True,
            "fp8_scaled": True,
            "max_train_steps": 2,
            "learning_rate": 1e-3,
            "seed": 0,
            "max_data_loader_n_workers": 0,
        },
    )
    assert result.counts["steps"] == 2
    assert math.isfinite(result.counts["first loss"]) and math.isfinite(result.counts["last loss"])
    with safe_open(str(tmp_path / "fp8-lora.safetensors"), "pt") as handle:
        ups = [handle.get_tensor(k) for k in handle.keys() if k.endswith("lora_up.weight")]  # noqa: SIM118
        assert handle.metadata()["ss_fp8_base"] == "True"
    assert (
        len(ups) == 34 and all(torch.isfinite(u).all() for u in ups) and any(u.abs().sum() > 0 for u in ups)
    )


def test_tuner_generate_samples_with_fp8_weights_close_to_full_precision(kit, tmp_path):
    values = {
        **kit["models"],
        "prompt": "a red square",
        "image_path": str(kit["start"]),
        "video_size": [32, 48],
        "latent_window_size": 3,
        "video_sections": 1,
        "infer_steps": 2,
        "seed": 5,
        "output_type": "latent",
    }
    latents = {}
    for name, flags in {"full": {}, "fp8_scaled": {"fp8_scaled": True}, "fp8": {"fp8": True}}.items():
        result = run("generate", {**values, **flags, "save_path": tmp_path / name})
        (path,) = result.outputs["latent"]
        latents[name] = load_file(str(path))["latent"].float()
    for name in ("fp8_scaled", "fp8"):
        cosine = torch.nn.functional.cosine_similarity(
            latents[name].flatten(), latents["full"].flatten(), dim=0
        ).item()
        print(f"generate --{name}: latent cosine to full precision {cosine:.5f}")
        assert cosine > 0.99
    lora = tmp_path / "lora.safetensors"
    name = "lora_unet_transformer_blocks_0_attn_to_q"
    save_file(
        {f"{name}.lora_down.weight": torch.zeros(4, 64), f"{name}.lora_up.weight": torch.zeros(64, 4)}, lora
    )
    # A LoRA merges into each weight before it is quantised; a zero update leaves the fp8 weights as they were.
    result = run(
        "generate", {**values, "fp8_scaled": True, "lora_weight": [lora], "save_path": tmp_path / "x"}
    )
    (path,) = result.outputs["latent"]
    assert torch.equal(load_file(str(path))["latent"].float(), latents["fp8_scaled"])
