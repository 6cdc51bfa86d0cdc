"""The tuner CLI: plugins listing, per-architecture help, config files, validation, honest not-yet errors."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tuner_cli.main import main

from .test_plugin_manager import make_distribution


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_plugins_lists_framepack_and_lora_from_entry_points(capsys):
    code, out, _ = run(capsys, "plugins")
    assert code == 0
    assert "framepack  (tuner-framepack " in out and "architectures: framepack" in out
    assert "lora  (tuner-lora " in out and "networks: " in out and "lora (also networks.lora" in out
    assert "tuner_core.defaults  (built in)" in out


def test_train_help_lists_core_and_architecture_options(capsys):
    code, out, _ = run(capsys, "train", "--arch", "framepack", "--help")
    assert code == 0
    for flag in (
        "--dataset_config",
        "--learning_rate",
        "--network_module",
        "--blocks_to_swap",
        "--fp8_scaled",
    ):
        assert flag in out
    assert "framepack options" in out
    for flag in ("--dit", "--text_encoder1", "--image_encoder", "--latent_window_size", "--vae_chunk_size"):
        assert flag in out


def test_help_without_arch_explains_how_to_see_arch_options(capsys):
    code, out, _ = run(capsys, "cache-latents", "--help")
    assert code == 0 and "Add --arch NAME" in out and "framepack" in out


def test_missing_arch_is_a_clear_error(capsys):
    code, _, err = run(capsys, "train", "--dataset_config", "x.toml")
    assert code == 2 and "--arch is required. Available architectures: framepack" in err


@pytest.fixture
def dataset(tmp_path):
    (tmp_path / "videos").mkdir()
    path = tmp_path / "dataset.toml"
    path.write_text(f'[[datasets]]\nvideo_directory = "{tmp_path / "videos"}"\n')
    return path


def test_bad_choice_is_reported_with_suggestion(capsys, dataset, tmp_path):
    code, _, err = run(
        capsys,
        "train",
        "--arch",
        "framepack",
        "--dataset_config",
        str(dataset),
        "--output_dir",
        str(tmp_path),
        "--dit",
        "d.safetensors",
        "--timestep_sampling",
        "shfit",
    )
    assert code == 2 and "option --timestep_sampling got 'shfit'" in err and "Did you mean 'shift'" in err


def test_cross_option_rule(capsys, dataset, tmp_path):
    code, _, err = run(
        capsys,
        "train",
        "--arch",
        "framepack",
        "--dataset_config",
        str(dataset),
        "--output_dir",
        str(tmp_path),
        "--dit",
        "d",
        "--sage_attn",
    )
    assert code == 2 and "--sage_attn is for inference only" in err


def test_fp8_scaled_implies_fp8_base_as_in_the_reference(dataset, tmp_path):
    from tuner_cli.parser import build_command_options
    from tuner_core import make_plugin_manager
    from tuner_core.training.model_setup import memory_settings

    plugins = make_plugin_manager()
    arch = plugins.architecture("framepack")
    strategies = plugins.memory_strategies()
    train = build_command_options(
        "train",
        arch,
        {"dataset_config": dataset, "output_dir": tmp_path, "dit": tmp_path, "fp8_scaled": True},
        {},
        None,
        strategies,
    )
    assert memory_settings(train, training=True).fp8_base
    generate = build_command_options(  # the guide's users may give both
        "generate",
        arch,
        {"save_path": tmp_path, "prompt": "p", "fp8": True, "fp8_scaled": True},
        {},
        None,
        strategies,
    )
    settings = memory_settings(generate, training=False)
    assert settings.fp8_base and settings.fp8_scaled


def test_missing_required_architecture_option(capsys, dataset):
    code, _, err = run(
        capsys, "cache-latents", "--arch", "framepack", "--dataset_config", str(dataset), "--vae", "v"
    )
    assert code == 2 and "missing required option --image_encoder" in err


def test_config_file_supplies_options_and_command_line_wins(tmp_path, dataset, capsys, monkeypatch):
    from tuner_core.commands import run as run_module

    seen = {}

    def capture(options, **_):
        seen["options"] = options
        return run_module.CommandResult("train", counts={"steps": 0})

    monkeypatch.setitem(run_module.RUNNERS, "train", capture)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"")  # pre-flight wants inputs to exist, not to load
    config = tmp_path / "train.toml"
    config.write_text(
        textwrap.dedent(
            f"""
            arch = "framepack"
            dataset_config = "{dataset}"
            [optimizer]
            learning_rate = 1e-4
            optimizer_type = "AdamW"
            [model]
            dit = "model.safetensors"
            latent_window_size = 5
            [output]
            output_dir = "{tmp_path / "out"}"
            """
        )
    )
    code, out, err = run(capsys, "train", "--config_file", str(config), "--learning_rate", "3e-4")
    assert code == 0, err
    assert seen["options"].learning_rate == 3e-4  # the command line wins
    assert seen["options"].optimizer_type == "AdamW"
    assert seen["options"].latent_window_size == 5 and seen["options"].dit == Path("model.safetensors")


def test_config_file_unknown_key_is_named(tmp_path, capsys):
    config = tmp_path / "train.toml"
    config.write_text("[optimizer]\nlearnig_rate = 1e-4\n")
    code, _, err = run(capsys, "train", "--arch", "framepack", "--config_file", str(config))
    assert (
        code == 2
        and "[optimizer]: unknown option 'learnig_rate'" in err
        and "Did you mean 'learning_rate'" in err
    )


def test_config_file_bad_value_names_the_file(tmp_path, capsys):
    config = tmp_path / "train.toml"
    config.write_text('learning_rate = "fast"\n')
    code, _, err = run(capsys, "train", "--arch", "framepack", "--config_file", str(config))
    assert code == 2 and str(config) in err and "'learning_rate' got 'fast'" in err


def test_generate_parses_and_validates(capsys, tmp_path):
    code, _, err = run(
        capsys,
        "generate",
        "--arch",
        "framepack",
        "--save_path",
        str(tmp_path),
        "--prompt",
        "a cat",
        "--video_size",
        "250",
        "256",
    )
    assert code == 2 and "--video_size must be two positive multiples of 8" in err


def test_console_script_and_broken_plugin_in_subprocess(tmp_path):
    make_distribution(tmp_path, "tuner-broken", "tuner_broken_cli", "raise RuntimeError('kaput')\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    env.pop("TUNER_STRICT_PLUGINS", None)
    result = subprocess.run(
        [sys.executable, "-m", "tuner_cli", "plugins"], capture_output=True, text=True, env=env
    )
    assert result.returncode == 0
    assert "architectures: framepack" in result.stdout
    assert "tuner-broken" in result.stderr and "kaput" in result.stderr
    env["TUNER_STRICT_PLUGINS"] = "1"
    strict = subprocess.run(
        [sys.executable, "-m", "tuner_cli", "plugins"], capture_output=True, text=True, env=env
    )
    assert strict.returncode == 1 and "failed to load: RuntimeError: kaput" in strict.stderr
