"""FramePack section caching: throughput (sections/s) and peak memory, with and without VAE tiling.

The real ``tuner cache-latents --arch framepack`` path (decode, resize, VAE, SigLIP, sections, atomic writes)
runs on the tiny random-weight models of the test kit, on CPU in float32. Peak memory is the most tensor
memory alive at once during the command, from the PyTorch profiler's allocation timeline (see
``tuner_framepack.testing.tiny_memory``), in a second run: time is measured without the profiler. Runs alternate plain / tiled so machine drift hits both.

    python benchmarks/framepack_caching.py [--videos 4] [--frames 73] [--size 128] [--tile 64] [--rounds 2]

Prints figures and the tiled/plain ratios; the tiled peak must be lower.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from tuner_cli.parser import build_command_options
from tuner_core.commands.run import run_command
from tuner_core.media.write import write_video
from tuner_core.plugins import make_plugin_manager
from tuner_framepack.testing.tiny_encoders import save_tiny_encoder_kit
from tuner_framepack.testing.tiny_memory import peak_memory
from tuner_toy.sample_data import square_video


def run_once(values: dict, cache: Path) -> tuple[float, int, int]:
    """(seconds of a plain run, peak bytes of a profiled run, sections written)."""
    plugins = make_plugin_manager()
    arch = plugins.architecture("framepack")
    options = build_command_options("cache-latents", arch, values, {}, None)

    def command():
        shutil.rmtree(cache, ignore_errors=True)
        return run_command("cache-latents", options, architecture=arch, plugins=plugins)

    start = time.perf_counter()
    command()
    elapsed = time.perf_counter() - start  # timed without the profiler, which slows everything down
    peak, _ = peak_memory(command)
    return elapsed, peak, len(list(cache.glob("*_fp.safetensors")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=2)
    parser.add_argument("--frames", type=int, default=73)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--tile", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        kit = save_tiny_encoder_kit(root / "kit")
        videos = root / "videos"
        videos.mkdir()
        for i in range(args.videos):
            clip = square_video(
                (50 + 40 * i, 200, 90), (1, 0) if i % 2 else (0, 1), frames=args.frames, size=args.size
            )
            write_video(videos / f"clip{i}.mp4", clip, 30)
            (videos / f"clip{i}.txt").write_text(f"clip {i}")
        dataset = root / "dataset.toml"
        cache = root / "cache"
        dataset.write_text(
            f"[general]\nresolution = {args.size}\n[[datasets]]\nvideo_directory = '{videos}'\n"
            f"cache_directory = '{cache}'\nframe_extraction = 'full'\nmax_frames = {args.frames}\n"
        )
        base = {
            "dataset_config": dataset,
            "vae": kit.vae.snapshot,
            "image_encoder": kit.image_encoder.comfy_file,
        }
        tiled_values = {**base, "vae_spatial_tile_sample_min_size": args.tile}
        plain, tiled = [], []
        for _ in range(args.rounds):
            plain.append(run_once(base, cache))
            tiled.append(run_once(tiled_values, cache))
        sections = plain[0][2]
        for label, runs in (("plain", plain), (f"tiled {args.tile}px", tiled)):
            seconds = statistics.median(r[0] for r in runs)
            peak = statistics.median(r[1] for r in runs)
            print(f"{label:12s} {sections / seconds:7.2f} sections/s   peak {peak / 2**20:8.1f} MiB")
        ratio_peak = statistics.median(r[1] for r in tiled) / statistics.median(r[1] for r in plain)
        ratio_time = statistics.median(r[0] for r in tiled) / statistics.median(r[0] for r in plain)
        print(
            f"{args.videos} clips of {args.frames} frames at {args.size}px -> {sections} sections (window 9), "
            f"tiny VAE/SigLIP, CPU float32"
        )
        print(f"tiled/plain: peak memory {ratio_peak:.2f} (must be < 1), time {ratio_time:.2f}")


if __name__ == "__main__":
    main()
