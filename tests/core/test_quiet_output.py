"""A normal run prints only what the user needs: no third-party noise, plain sentences, lines above the bar."""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from tuner_core.logging_setup import LOG_LEVEL_ENV, configure_logging
from tuner_core.media.write import write_video
from tuner_core.training import cached_data
from tuner_core.training.cached_data import available_cpus, data_loader_workers
from tuner_core.training.lr_schedulers import LrCurve
from tuner_core.training.optimizers import readable_description
from tuner_framepack.testing.tiny_dit import save_tiny_dit_diffusers
from tuner_framepack.testing.tiny_encoders import (
    kit_dit_config,
    save_tiny_encoder_kit,
)
from tuner_toy.sample_data import square_video

# Every command runs in one fresh interpreter: bitsandbytes warns only on its first import in a process,
# which an earlier test of this session may already have done. Two CPUs (fewer than the default 8
# data-loader workers) make torch's worker-count warning appear unless the workers are capped.
SCRIPT = textwrap.dedent(
    """
    import os, sys
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:2])
    from tuner_cli.main import main
    for line in sys.stdin.read().splitlines():
        code = main(line.split("\\t"))
        if code:
            sys.exit(code)
    """
)


@pytest.fixture(scope="module")
def kit(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("quiet")
    encoders = save_tiny_encoder_kit(root / "encoders")
    config = kit_dit_config()
    videos = root / "videos"
    videos.mkdir()
    write_video(videos / "walk.mp4", square_video((200, 50, 50), (1, 0), frames=37, size=64), 30)
    (videos / "walk.txt").write_text("a red square")
    dataset = root / "dataset.toml"
    dataset.write_text(
        f"[general]\nresolution = [64, 64]\ncaption_extension = '.txt'\n"
        f"[[datasets]]\nvideo_directory = '{videos}'\ncache_directory = '{root / 'cache'}'\n"
        "frame_extraction = 'full'\n"
    )
    return {
        "root": root,
        "dataset": dataset,
        "dit": save_tiny_dit_diffusers(root / "dit", config=config).shards[0],
        "vae": encoders.vae.snapshot,
        "image_encoder": encoders.image_encoder.comfy_file,
        "text_encoder1": encoders.text_encoder1.first_shard,
        "text_encoder2": encoders.text_encoder2.comfy_file,
        "tokenizer2": encoders.text_encoder2.tokenizer_dir,
    }


def run_cli(commands: list[list[object]]) -> str:
    """Run ``commands`` through ``tuner_cli.main.main`` in one subprocess; stdout and stderr together."""
    environ = {k: v for k, v in os.environ.items() if k != LOG_LEVEL_ENV}
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        input="\n".join("\t".join(str(a) for a in argv) for argv in commands),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=environ,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-4000:]
    return result.stdout


def commands(kit: dict[str, Path]) -> list[list[object]]:
    out = kit["root"] / "out"
    train = ["train", "--arch", "framepack", "--dataset_config", kit["dataset"], "--dit", kit["dit"]]
    train += ["--network_module", "networks.lora_framepack", "--network_dim", "4", "--seed", "1"]
    train += ["--output_dir", out, "--output_name", "lora"]
    return [
        ["cache-latents", "--arch", "framepack", "--dataset_config", kit["dataset"], "--vae", kit["vae"]]
        + ["--image_encoder", kit["image_encoder"]],
        ["cache-text", "--arch", "framepack", "--dataset_config", kit["dataset"]]
        + ["--text_encoder1", kit["text_encoder1"], "--text_encoder2", kit["text_encoder2"]]
        + ["--tokenizer2", kit["tokenizer2"]],
        [*train, "--max_train_steps", "2", "--save_state", "--save_every_n_steps", "1"],
        [*train, "--max_train_steps", "3", "--resume", out / "lora-step00000001-state"],
    ]


@pytest.fixture(scope="module")
def output(kit) -> str:
    return run_cli(commands(kit))


def test_a_normal_run_prints_no_third_party_noise(output):
    for noise in ("kernels-community", "UserWarning", "worker processes", "[RANK 0]", "accelerate"):
        assert noise not in output, noise
    assert not [line for line in output.splitlines() if line.startswith(("warning:", "WARNING"))], output


def test_log_lines_are_plain_sentences_without_module_paths(output):
    for expected in (
        "loaded the VAE (",
        "loaded the image encoder (",
        "loaded text encoder 1 (",
        "optimizer: AdamW\n",
        "lr schedule: constant over 2 steps\n",
        "resumed from ",
    ):
        assert expected in output, expected
    for path in ("tuner_core.", "tuner_framepack.", "tuner_lora.", "INFO", "LrCurve(", "AutoencoderKL"):
        assert path not in output, path


def test_log_lines_land_above_the_progress_bar_not_on_its_line(output):
    # A bar redraws its line after "\r"; a log line written beside it must start a segment of its own.
    saved = [line.split("\r")[-1] for line in output.splitlines() if "saved " in line]
    assert len(saved) >= 3, output
    assert all(segment.startswith("saved ") for segment in saved), saved


# -- the pieces, in-process --------------------------------------------------------------------------------


@pytest.fixture
def restore_logging():
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    names = ("accelerate", "bitsandbytes.backends.cpu.ops")
    saved = {n: (logging.getLogger(n).level, list(logging.getLogger(n).filters)) for n in names}
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, (old_level, filters) in saved.items():
        logging.getLogger(name).setLevel(old_level)
        logging.getLogger(name).filters[:] = filters


def test_formats_filters_and_levels(restore_logging, monkeypatch):
    monkeypatch.delenv(LOG_LEVEL_ENV, raising=False)
    stream = io.StringIO()
    assert configure_logging(stream=stream) == logging.INFO
    configure_logging(stream=stream)  # a second call replaces its handler: no doubled lines
    logging.getLogger("tuner_core.some.module").info("a plain sentence")
    logging.getLogger("tuner_core.some.module").debug("not shown at INFO")
    logging.getLogger("tuner_framepack.x").warning("something to act on")
    logging.getLogger("accelerate.checkpointing").info("[RANK 0] Saving ...")
    logging.getLogger("accelerate.checkpointing").warning("a real accelerate warning")
    bnb = logging.getLogger("bitsandbytes.backends.cpu.ops")
    bnb.warning(
        "Failed to load CPU gemm_4bit_forward from kernels-community: %s", "No module named 'kernels'"
    )
    bnb.error("a real bitsandbytes error")
    assert stream.getvalue().splitlines() == [
        "a plain sentence",
        "warning: something to act on",
        "warning: a real accelerate warning",
        "error: a real bitsandbytes error",
    ]

    stream = io.StringIO()
    monkeypatch.setenv(LOG_LEVEL_ENV, "debug")
    assert configure_logging(stream=stream) == logging.DEBUG
    logging.getLogger("accelerate.checkpointing").info("[RANK 0] Saving ...")
    bnb.warning("Failed to load CPU gemm_4bit_forward from kernels-community: %s", "x")
    assert stream.getvalue().splitlines() == [
        "INFO accelerate.checkpointing: [RANK 0] Saving ...",
        "WARNING bitsandbytes.backends.cpu.ops: Failed to load CPU gemm_4bit_forward from kernels-community: x",
    ]

    stream = io.StringIO()
    monkeypatch.setenv(LOG_LEVEL_ENV, "loud")
    assert configure_logging(stream=stream) == logging.INFO
    assert (
        stream.getvalue()
        == "warning: TUNER_LOG_LEVEL=loud is not one of DEBUG, INFO, WARNING, ERROR; using INFO\n"
    )


def test_importing_the_library_leaves_logging_alone():
    code = (
        "import logging; import tuner_core.logging_setup, tuner_cli.main, tuner_core.training.trainer; "
        "r = logging.getLogger(); "
        "assert not r.handlers and r.level == logging.WARNING, r.handlers; "
        "assert logging.getLogger('accelerate').level == logging.NOTSET"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_workers_are_capped_at_the_cpus(monkeypatch, caplog):
    monkeypatch.setattr(cached_data, "available_cpus", lambda: 4)
    with caplog.at_level(logging.DEBUG, logger="tuner_core.training.cached_data"):
        assert data_loader_workers(8) == 4
    assert "8 requested, capped at the 4 CPUs" in caplog.text
    assert [data_loader_workers(n) for n in (0, 1, 4)] == [0, 1, 4]


def test_available_cpus_uses_the_affinity_mask_else_the_cpu_count(monkeypatch):
    if hasattr(os, "sched_getaffinity"):
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 3, 5})
        assert available_cpus() == 3
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 6)
    assert available_cpus() == 6
    monkeypatch.setattr(os, "cpu_count", lambda: None)
    assert available_cpus() == 1


def test_schedule_and_optimizer_read_as_words():
    assert LrCurve(name="constant", total_steps=4).describe() == "constant over 4 steps"
    curve = LrCurve(
        name="cosine_with_restarts",
        total_steps=100,
        warmup_steps=10,
        decay_steps=50,
        num_cycles=3,
        min_lr_ratio=0.1,
    )
    assert curve.describe() == (
        "cosine_with_restarts over 100 steps, 10 warm-up steps, decaying over the last 50 steps, 3 cycles, "
        "down to 0.1 x the learning rate"
    )
    assert (
        LrCurve(name="polynomial", total_steps=8, power=2.0).describe() == "polynomial over 8 steps, power 2"
    )
    assert readable_description(torch.optim.AdamW, {}) == "AdamW"
    assert readable_description(torch.optim.SGD, {"momentum": 0.9}) == "SGD with momentum=0.9"

    class Lion(torch.optim.Optimizer):
        pass

    Lion.__module__ = "lion_pytorch.lion"
    assert (
        readable_description(Lion, {"betas": (0.9, 0.99)}) == "Lion from lion_pytorch with betas=(0.9, 0.99)"
    )
