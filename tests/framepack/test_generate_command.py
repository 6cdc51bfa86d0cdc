"""``tuner generate --arch framepack`` end to end on tiny random models, on the CPU.

Every run is small (96x64 pixels, windows of 3 latents, 2 steps, 1-2 sections), so a video takes about a
second. Model loads are counted by a plugin that sees every ``tuner_load_model`` call and answers none.
"""

from __future__ import annotations

import gc
import io
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from tuner_cli.parser import build_command_options
from tuner_core import ConfigError, hookimpl
from tuner_core.commands.result import CommandResult
from tuner_core.commands.run import run_command
from tuner_core.plugins import make_plugin_manager
from tuner_framepack.testing.tiny_dit import save_tiny_dit_diffusers
from tuner_framepack.testing.tiny_encoders import (
    kit_dit_config,
    save_tiny_encoder_kit,
)
from tuner_toy.sample_data import square_video

HEIGHT, WIDTH, WINDOW = 32, 48, 3
MODELS = ("dit", "vae", "text_encoder1", "text_encoder2", "image_encoder")


def frames(sections: int) -> int:
    """Pixel frames of a video of ``sections`` sections: 4 S W + 1."""
    return 4 * sections * WINDOW + 1


class Watcher:
    """Counts the model loads; answers nothing, so the architecture still loads every model."""

    def __init__(self) -> None:
        self.loads: Counter[str] = Counter()

    @hookimpl
    def tuner_load_model(self, component: str) -> None:
        self.loads[component] += 1


def run(values: dict[str, Any], *plugins: object) -> CommandResult:
    """``tuner generate --arch framepack`` with ``values`` (as the CLI passes them) and extra plugins."""
    manager = make_plugin_manager(plugins=list(plugins))
    arch = manager.architecture("framepack")
    options = build_command_options("generate", arch, values, {}, None, manager.memory_strategies())
    return run_command("generate", options, architecture=arch, plugins=manager)


def latent_of(result: CommandResult) -> torch.Tensor:
    (path,) = result.outputs["latent"]
    return load_file(str(path))["latent"]


def read_video(path: Path) -> dict[str, Any]:
    """What PyAV reads back from a written video: stream settings, container tags and the frames."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        pixels = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
        return {
            "codec": stream.codec_context.name,
            "pix_fmt": stream.codec_context.pix_fmt,
            "fps": stream.average_rate,
            "size": (stream.width, stream.height),
            "metadata": dict(container.metadata),
            "frames": np.stack(pixels),
        }


def pngs(directory: Path) -> list[np.ndarray]:
    return [np.array(Image.open(p)) for p in sorted(directory.glob("*.png"))]


@pytest.fixture(scope="module")
def kit(tmp_path_factory) -> dict[str, Any]:
    """Tiny models in the real formats, and start / end images (as ``test_framepack_pipeline``)."""
    root = tmp_path_factory.mktemp("framepack-generate")
    encoders = save_tiny_encoder_kit(root / "encoders")
    config = kit_dit_config()
    images = {}
    for name, colour, move in (("start", (200, 50, 50), (1, 0)), ("end", (50, 50, 200), (0, 1))):
        images[name] = root / f"{name}.png"
        Image.fromarray(square_video(colour, move, frames=1, size=WIDTH)[0]).save(images[name])
    return {
        "root": root,
        "models": {
            "dit": save_tiny_dit_diffusers(root / "dit", config=config).shards[0],
            "vae": encoders.vae.snapshot,
            "image_encoder": encoders.image_encoder.comfy_file,
            "text_encoder1": encoders.text_encoder1.first_shard,
            "text_encoder2": encoders.text_encoder2.comfy_file,
            "tokenizer2": encoders.text_encoder2.tokenizer_dir,  # Comfy's file ships no tokenizer
        },
        **images,
    }


@pytest.fixture(scope="module", autouse=True)
def _quick_gc(kit):
    """Freeze what the session holds so far (the imported libraries, the kit).

    ``Components.release`` runs ``gc.collect()`` several times per video, and each pass walks every
    object alive; with torch, transformers and diffusers imported that is half a second, most of a tiny
    video's time. Frozen objects are skipped; the models each run loads are created later, so they are
    still collected.
    """
    gc.collect()
    gc.freeze()
    yield
    gc.unfreeze()


def small_run(kit: dict[str, Any], save_path: Path) -> dict[str, Any]:
    """A one-section generation of 2 steps at seed 5, writing to ``save_path``."""
    return {
        **kit["models"],
        "prompt": "a red square",
        "image_path": str(kit["start"]),
        "video_size": [HEIGHT, WIDTH],
        "latent_window_size": WINDOW,
        "video_sections": 1,
        "infer_steps": 2,
        "seed": 5,
        "save_path": save_path,
    }


@pytest.fixture
def values(kit, tmp_path) -> dict[str, Any]:
    """:func:`small_run` into ``tmp_path / "out"``, for a test to change."""
    return small_run(kit, tmp_path / "out")


@pytest.fixture(scope="module")
def baseline(kit, tmp_path_factory) -> torch.Tensor:
    """The latents of :func:`small_run`, generated once for the tests that compare with them."""
    return latent_of(run({**small_run(kit, tmp_path_factory.mktemp("baseline")), "output_type": "latent"}))


# -- 1. what each --output_type writes -------------------------------------------------------------------


REFERENCE_LATENT_KEYS = {
    "seeds",
    "prompt",
    "height",
    "width",
    "infer_steps",
    "guidance_scale",
    "latent_window_size",
    "embedded_cfg_scale",
    "guidance_rescale",
    "sample_solver",
    "fps",
}


@pytest.mark.parametrize(
    ("output_type", "kinds"),
    [
        ("video", {"video"}),
        ("images", {"images"}),
        ("latent", {"latent"}),
        ("both", {"latent", "video"}),
        ("latent_images", {"latent", "images"}),
    ],
)
def test_each_output_type_writes_its_files(values, output_type, kinds):
    out = values["save_path"]
    result = run({**values, "output_type": output_type, "fps": 24})
    assert set(result.outputs) == kinds
    assert result.counts == {"seed": 5}
    written = {p.relative_to(out) for p in out.rglob("*") if p.is_file()}
    expected_files: set[Path] = set()
    if "latent" in kinds:
        (path,) = result.outputs["latent"]
        assert path.name.endswith("_5_latent.safetensors") and path.parent == out
        expected_files.add(path.relative_to(out))
        with safe_open(str(path), "pt") as handle:
            assert list(handle.keys()) == ["latent"]
            assert handle.get_slice("latent").get_shape() == [1, 16, WINDOW + 1, HEIGHT // 8, WIDTH // 8]
            metadata = handle.metadata()
        assert set(metadata) >= REFERENCE_LATENT_KEYS
        assert "video_sections" in metadata or "video_seconds" in metadata
        assert metadata["seeds"] == "5" and metadata["prompt"] == "a red square"
        assert (metadata["height"], metadata["width"], metadata["fps"]) == (str(HEIGHT), str(WIDTH), "24")
        assert (metadata["latent_window_size"], metadata["infer_steps"]) == (str(WINDOW), "2")
        assert metadata["video_sections"] == "1" and "video_seconds" not in metadata  # the length it has
        assert metadata["sample_solver"] == "unipc" and metadata["embedded_cfg_scale"] == "10.0"
    if "video" in kinds:
        (path,) = result.outputs["video"]
        assert path.suffix == ".mp4" and path.stem.endswith("_5")
        expected_files.add(path.relative_to(out))
        video = read_video(path)
        assert (video["codec"], video["pix_fmt"], video["fps"]) == ("h264", "yuv420p", 24)
        assert video["size"] == (WIDTH, HEIGHT) and len(video["frames"]) == frames(1)
        settings = json.loads(video["metadata"]["comment"])
        assert settings["seeds"] == "5" and settings["fps"] == "24" and settings["prompt"] == "a red square"
    if "images" in kinds:
        paths = result.outputs["images"]
        assert len(paths) == frames(1) and [p.name for p in paths[:2]] == ["0000.png", "0001.png"]
        assert len({p.parent for p in paths}) == 1 and paths[0].parent.name.endswith("_5")
        expected_files |= {p.relative_to(out) for p in paths}
        with Image.open(paths[0]) as image:
            assert image.size == (WIDTH, HEIGHT) and image.text["seeds"] == "5"
    assert written == expected_files  # nothing else, no temporary files


def test_no_metadata_writes_no_settings(values):
    result = run({**values, "output_type": "both", "no_metadata": True})
    with safe_open(str(result.outputs["latent"][0]), "pt") as handle:
        assert not handle.metadata()
    assert "comment" not in read_video(result.outputs["video"][0])["metadata"]


# -- 2. seeds, solvers, layouts, section prompts -------------------------------------------------------


def test_the_same_seed_gives_the_same_latents_and_another_seed_others(values, baseline):
    again = latent_of(run({**values, "output_type": "latent"}))
    assert again.numpy().tobytes() == baseline.numpy().tobytes()
    other = latent_of(run({**values, "output_type": "latent", "seed": 6}))
    assert other.shape == baseline.shape and not torch.equal(other, baseline)


@pytest.mark.parametrize(
    "change",
    [
        pytest.param({"f1": True}, id="f1"),
        pytest.param({"end_image_path": "end"}, id="end_image"),
    ],
)
def test_solver_and_layouts_generate_other_latents(kit, values, baseline, change):
    if "end_image_path" in change:
        change = {"end_image_path": kit["end"]}
    latents = latent_of(run({**values, **change, "output_type": "latent"}))
    assert latents.shape == baseline.shape and torch.isfinite(latents).all()
    assert not torch.equal(latents, baseline)


def test_euler_and_unipc_differ_from_three_steps_on(values):
    # At 2 steps UniPC runs at order 1, which is exactly an Euler step: the solvers first differ at 3.
    three = {**values, "output_type": "latent", "infer_steps": 3}
    unipc, euler = (latent_of(run({**three, "sample_solver": s})) for s in ("unipc", "euler"))
    assert torch.isfinite(euler).all() and not torch.equal(unipc, euler)


def test_section_prompts_give_each_section_its_own_prompt(values):
    two = {**values, "video_sections": 2, "output_type": "latent"}
    plain = latent_of(run(two))
    sectioned = latent_of(run({**two, "prompt": "0:a red square;;;1:a blue square"}))
    assert sectioned.shape == plain.shape == (1, 16, 2 * WINDOW + 1, HEIGHT // 8, WIDTH // 8)
    assert not torch.equal(sectioned, plain)


# -- 3. decoding saved latents -------------------------------------------------------------------------


def test_a_saved_latent_decodes_to_what_generation_wrote_without_the_other_models(values, tmp_path):
    generated = run({**values, "output_type": "latent_images", "video_sections": 2, "fps": 24})
    (latent_file,) = generated.outputs["latent"]
    watcher = Watcher()
    # No --latent_window_size (default 9) nor --fps: the file's recorded 3 and 24 are used.
    decode = {"vae": values["vae"], "latent_path": [latent_file], "save_path": tmp_path / "decoded"}
    decoded = run({**decode, "output_type": "images"}, watcher)
    assert watcher.loads == {"vae": 1}
    assert decoded.counts == {"decoded": 1}
    written, again = pngs(generated.outputs["images"][0].parent), pngs(decoded.outputs["images"][0].parent)
    assert len(written) == len(again) == frames(2)
    assert all(np.array_equal(a, b) for a, b in zip(written, again))

    # A video by default, named after the latent file (in a directory without that name's images).
    (video,) = run({**decode, "save_path": tmp_path / "video"}).outputs["video"]
    assert video.name == latent_file.name.replace("_latent.safetensors", ".mp4")
    video = read_video(video)
    assert len(video["frames"]) == frames(2) and video["fps"] == 24
    assert json.loads(video["metadata"]["comment"])["seeds"] == "5"  # the generation's settings


# -- 4. --from_file ------------------------------------------------------------------------------------


def test_from_file_loads_each_model_once_for_all_jobs(values, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(
        "# three jobs\n"
        "a red square --d 11\n"
        "\n"
        "a blue square --d 12 --w 64 --h 64\n"
        "a red square, slowly --d 13 --s 3\n"
    )
    watcher = Watcher()
    del values["prompt"]
    result = run({**values, "from_file": prompts}, watcher)
    assert watcher.loads == dict.fromkeys(MODELS, 1)
    videos = result.outputs["video"]
    assert len(videos) == len({v.name for v in videos}) == 3 and result.counts == {"videos": 3}
    assert [v.stem.rsplit("_", 1)[1] for v in videos] == ["11", "12", "13"]
    settings = [read_video(v) for v in videos]
    assert [json.loads(s["metadata"]["comment"])["seeds"] for s in settings] == ["11", "12", "13"]
    assert [s["size"] for s in settings] == [(WIDTH, HEIGHT), (64, 64), (WIDTH, HEIGHT)]
    assert json.loads(settings[2]["metadata"]["comment"])["infer_steps"] == "3"
    assert all(len(s["frames"]) == frames(1) for s in settings)


# -- 5. a killed run -----------------------------------------------------------------------------------


class KilledDecode:
    """Lets the first video decode; hands the second's writer one run of frames, then Ctrl-C."""

    def __init__(self) -> None:
        self.calls = 0

    @hookimpl
    def tuner_decode_latents(self, sink):
        self.calls += 1
        if self.calls == 2:
            sink(torch.rand(3, 5, HEIGHT, WIDTH))
            raise KeyboardInterrupt


def test_a_killed_generation_leaves_no_file_at_a_final_path(values, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red square --d 1\na red square --d 2\n")
    with pytest.raises(KeyboardInterrupt):
        run({**values, "from_file": prompts}, KilledDecode())
    left = sorted(p.name for p in values["save_path"].iterdir())
    assert len(left) == 1 and left[0].endswith("_1.mp4")  # the complete first video; no temporary file
    assert len(read_video(values["save_path"] / left[0])["frames"]) == frames(1)


# -- 6. bad input: one line naming the option, before any model loads ----------------------------------


def not_a_latent(tmp_path: Path) -> Path:
    path = tmp_path / "other_latent.safetensors"
    save_file({"latents": torch.zeros(1, 16, 4, 8, 12)}, str(path))
    return path


def text_file(tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    path.write_text("not what it says it is")
    return path


def other_lora(tmp_path: Path, name: str) -> Path:
    """A LoRA of other models: an SD-style U-Net layer and a text-encoder layer, none FramePack's."""
    modules = ("lora_unet_down_blocks_0_attentions_0_proj_in", "lora_te_text_model_encoder_layers_0_mlp_fc1")
    path = tmp_path / name
    weights = {}
    for module in modules:
        weights |= {
            f"{module}.lora_down.weight": torch.ones(4, 8),
            f"{module}.lora_up.weight": torch.ones(8, 4),
        }
    save_file(weights, str(path))
    return path


BAD_INPUTS = [
    pytest.param({"image_path": None}, "--image_path is required", id="no-image"),
    pytest.param({"image_path": "missing.png"}, "--image_path: no such image file", id="missing-image"),
    pytest.param(
        {"image_path": lambda tmp: str(text_file(tmp, "broken.png"))},
        r"--image_path .*broken.png.*not an image",
        id="unreadable-image",
    ),
    pytest.param({"video_size": [72, WIDTH]}, r"--video_size 72 \d+ .*height 72: use 64 or 80", id="size"),
    pytest.param({"video_sections": None, "video_seconds": 0}, "--video_seconds", id="zero-seconds"),
    pytest.param({"video_sections": None, "video_seconds": -1}, "video_seconds", id="negative-seconds"),
    pytest.param({"prompt": "0:a;;;x:b"}, r"--prompt: 'x' before the colon", id="section-prompt"),
    pytest.param(
        {"latent_path": lambda tmp: [not_a_latent(tmp)]},
        r"--latent_path .*other_latent.safetensors: not a latent file",
        id="latent-other-keys",
    ),
    pytest.param(
        {"latent_path": lambda tmp: [text_file(tmp, "notes_latent.safetensors")]},
        r"--latent_path .*notes_latent.safetensors: not a safetensors file",
        id="latent-text-file",
    ),
    pytest.param(
        {"latent_paddings": "3,x"}, r"--latent_paddings '3,x': 'x' is not an integer", id="paddings"
    ),
    pytest.param({"guidance_rescale": 2}, "--guidance_rescale must be between 0 and 1", id="rescale"),
    pytest.param({"flow_shift": 0}, "--flow_shift must be above 0", id="flow-shift"),
]


@pytest.mark.parametrize(("change", "message"), BAD_INPUTS)
def test_bad_input_is_one_line_naming_the_option_before_any_model_loads(values, tmp_path, change, message):
    change = {k: v(tmp_path) if callable(v) else v for k, v in change.items()}
    values = {k: v for k, v in {**values, **change}.items() if v is not None}
    watcher = Watcher()
    with pytest.raises(ConfigError, match=message) as caught:
        run(values, watcher)
    assert "\n" not in str(caught.value)
    assert not watcher.loads
    assert not values["save_path"].exists()


def test_a_missing_end_image_is_refused_before_any_model_loads(values):
    watcher = Watcher()
    with pytest.raises(ConfigError, match="--end_image_path: no such image file: missing-end.png") as caught:
        run({**values, "end_image_path": "missing-end.png"}, watcher)
    # Also "--end_image_path missing-end.png: does not exist" from the core's check of path options: the
    # same problem twice, since pre-flight does not merge the two checks' messages.
    assert "--image_path" not in str(caught.value)
    assert not watcher.loads


def test_a_lora_for_another_model_is_an_error_not_a_warning(values, tmp_path):
    lora = other_lora(tmp_path, "other.safetensors")
    with pytest.raises(
        ConfigError, match=r"--lora_weight .*other.safetensors: none of its layers is a layer of this"
    ):
        run({**values, "lora_weight": [lora]})
    assert not values["save_path"].exists()


def test_a_lora_for_another_model_is_refused_before_any_model_loads(values, tmp_path):
    lora = other_lora(tmp_path, "other.safetensors")
    watcher = Watcher()
    with pytest.raises(ConfigError):
        run({**values, "lora_weight": [lora]}, watcher)
    assert not watcher.loads


# -- 7. LoRA at generation -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lora_file(kit, tmp_path_factory) -> Path:
    """A LoRA of the tiny DiT made by the lora plugin, its up weights random (a fresh one changes nothing)."""
    from tuner_framepack.dit import load_dit

    plugins = make_plugin_manager()
    layout = plugins.architecture("framepack").layout
    network = plugins.network("lora").create(
        load_dit(kit["models"]["dit"]), layout, dim=4, alpha=4.0, dropout=None, args={}
    )
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, parameter in network.named_parameters():
            if "lora_up" in name:
                parameter.copy_(0.5 * torch.randn(parameter.shape, generator=generator))
    state = network.adapter_state_dict()
    assert "lora_unet_transformer_blocks_0_attn_to_q.lora_up.weight" in state
    path = tmp_path_factory.mktemp("lora") / "tiny-lora.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path


def test_a_lora_changes_the_video_and_multiplier_0_does_not(values, baseline, lora_file):
    latent = {**values, "output_type": "latent", "lora_weight": [lora_file]}
    assert not torch.equal(latent_of(run(latent)), baseline)
    assert torch.equal(latent_of(run({**latent, "lora_multiplier": [0.0]})), baseline)


# -- 8. --interactive through the CLI ------------------------------------------------------------------


def cli_arguments(values: dict[str, Any]) -> list[str]:
    argv = ["generate", "--arch", "framepack"]
    for key, value in values.items():
        argv += [f"--{key}", *(map(str, value) if isinstance(value, list) else [str(value)])]
    return argv


def test_interactive_generates_each_typed_prompt_with_the_models_loaded_once(values, monkeypatch, capsys):
    from tuner_cli import main as cli

    watcher = Watcher()
    monkeypatch.setattr(cli, "make_plugin_manager", lambda: make_plugin_manager(plugins=[watcher]))
    typed = "a red square --d 3\na red square --i missing.png\n\na blue square --d 3\nexit\nnever read\n"
    monkeypatch.setattr(sys, "stdin", io.StringIO(typed))
    del values["prompt"], values["seed"]
    assert cli.main([*cli_arguments(values), "--interactive"]) == 0
    shown = capsys.readouterr()
    assert "Interactive mode" in shown.out and "> " in shown.out and "Leaving interactive mode" in shown.out
    assert "prompt skipped: --image_path: no such image file: missing.png" in shown.err  # and went on
    videos = sorted(values["save_path"].glob("*.mp4"))
    assert len({v.name for v in videos}) == 2 and all("_3" in v.stem for v in videos)  # same seed
    assert watcher.loads == dict.fromkeys(MODELS, 1)
    prompts = [json.loads(read_video(v)["metadata"]["comment"])["prompt"] for v in videos]
    assert sorted(prompts) == ["a blue square", "a red square"]


def test_interactive_one_prompt_writes_one_video(values, monkeypatch, capsys):
    from tuner_cli import main as cli

    monkeypatch.setattr(sys, "stdin", io.StringIO("a red square --d 3\nexit\n"))
    del values["prompt"], values["seed"]
    assert cli.main([*cli_arguments(values), "--interactive"]) == 0
    (video,) = values["save_path"].glob("*.mp4")
    assert video.stem.endswith("_3") and len(read_video(video)["frames"]) == frames(1)
    assert f"video: {video}" in capsys.readouterr().out


def test_run_command_takes_jobs_for_generate_only():
    plugins = make_plugin_manager()
    with pytest.raises(TypeError, match="jobs are for generate, not train"):
        run_command("train", None, architecture=plugins.architecture("framepack"), plugins=plugins, jobs=[])


# -- help ----------------------------------------------------------------------------------------------


def test_help_lists_the_generation_options(capsys):
    from tuner_cli.main import main

    assert main(["generate", "--arch", "framepack", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    for flag in ("--image_path", "--video_seconds", "--video_sections", "--latent_path", "--output_type"):
        assert flag in text
    assert "instead of generating; needs only the VAE" in text  # --latent_path
    assert "End image the video ends with (ignored with --f1" in text
    assert "counted at 30 fps whatever --fps is" in text  # --video_seconds
