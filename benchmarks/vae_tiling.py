"""Peak memory and time of a HunyuanVideo VAE encode with and without the ``--vae_*`` memory options.

Method:

- The VAE is the tiny random-weight one from the test kit (float32, CPU) unless ``--vae`` names real weights
  (any format the loader accepts); ``--device cuda`` runs on a GPU in float16, the reference's dtype.
- The input is uniform noise in [-1, 1] of ``--frames`` frames at ``--size`` x ``--size`` pixels.
- Peak memory is the most tensor memory alive at once during the encode on top of what existed before it
  (CUDA: the allocator's peak; CPU: the PyTorch profiler's allocation timeline). Time is one encode after
  one warm-up encode of the same configuration.
- "rel. error" is ||z - z_whole|| / ||z_whole|| against the untiled, unchunked posterior mean. Random weights
  exaggerate tiling error; chunking is exact by construction.

Only figures are printed; nothing is asserted. Run: ``python benchmarks/vae_tiling.py [--size 256 --frames 5
--tile 128 --chunk 32]``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from tuner_framepack.encoders import configure_vae_memory, load_vae
from tuner_framepack.testing.tiny_encoders import save_tiny_vae
from tuner_framepack.testing.tiny_memory import peak_memory


def _measure(vae, pixels: torch.Tensor, device: torch.device) -> tuple[int, float, torch.Tensor]:
    def encode() -> torch.Tensor:
        with torch.no_grad():
            return vae.encode(pixels).latent_dist.mode()

    encode()  # warm-up (kernel selection, lazy allocations)
    peak, latents = peak_memory(encode, device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    encode()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return peak, time.perf_counter() - start, latents


def main() -> None:
    """Parse the options, run the configurations and print one line each."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vae", type=Path, default=None, help="real VAE weights (default: tiny random VAE)")
    parser.add_argument("--size", type=int, default=256, help="frame width and height in pixels")
    parser.add_argument("--frames", type=int, default=5, help="pixel frames (4k+1)")
    parser.add_argument("--tile", type=int, default=128, help="--vae_spatial_tile_sample_min_size to test")
    parser.add_argument("--chunk", type=int, default=32, help="--vae_chunk_size to test")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = torch.float16 if device.type == "cuda" else torch.float32

    with tempfile.TemporaryDirectory() as tmp:
        path = args.vae or save_tiny_vae(Path(tmp)).diffusers_file
        vae = load_vae(path, dtype=dtype, device=device)
    source = str(args.vae) if args.vae else "tiny random-weight VAE"
    generator = torch.Generator().manual_seed(0)
    pixels = (torch.rand(1, 3, args.frames, args.size, args.size, generator=generator) * 2 - 1).to(
        device, dtype
    )

    cases = {
        "whole": {},
        f"tiling {args.tile}px": {"tile_sample_min_size": args.tile},
        f"chunk {args.chunk}": {"chunk_size": args.chunk},
        f"tiling {args.tile}px + chunk {args.chunk}": {
            "tile_sample_min_size": args.tile,
            "chunk_size": args.chunk,
        },
    }
    print(f"encode of 1x3x{args.frames}x{args.size}x{args.size} {dtype} on {device} ({source})")
    print(f"{'configuration':<32} {'peak MiB':>9} {'vs whole':>9} {'time s':>8} {'rel. error':>11}")
    whole_peak, whole = 0, None
    for name, options in cases.items():
        configure_vae_memory(vae, **options)
        peak, seconds, latents = _measure(vae, pixels, device)
        if whole is None:
            whole_peak, whole = peak, latents.float()
        error = ((latents.float() - whole).norm() / whole.norm()).item()
        print(f"{name:<32} {peak / 2**20:>9.1f} {peak / whole_peak:>9.2f} {seconds:>8.2f} {error:>11.4f}")


if __name__ == "__main__":
    main()
