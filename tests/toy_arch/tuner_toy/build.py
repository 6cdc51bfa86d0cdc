"""Create the toy models' weight files (random, seeded) for tests and the demo."""

from __future__ import annotations

from pathlib import Path

import attrs
import torch
from safetensors.torch import save_file

from tuner_toy.models import LATENT_CHANNELS, SPATIAL, ToyAutoencoder, ToyDenoiser, ToyTextEncoder


@attrs.frozen
class ToyModelFiles:
    """Paths of the three toy weight files."""

    vae: Path
    text_encoder: Path
    dit: Path


def _patch_codec() -> tuple[torch.Tensor, torch.Tensor]:
    """Encoder rows: the mean colour of a 4x4 patch (3 channels), its left-right and top-bottom colour
    differences (5 channels); the decoder is the encoder's pseudo-inverse, so decoding is blocky but faithful."""
    rows = torch.zeros(LATENT_CHANNELS, 3, SPATIAL, SPATIAL)
    for c in range(3):
        rows[c, c] = 1.0
        rows[3 + c, c, :, : SPATIAL // 2], rows[3 + c, c, :, SPATIAL // 2 :] = 1.0, -1.0
    for k, c in enumerate((0, 1)):
        rows[6 + k, c, : SPATIAL // 2], rows[6 + k, c, SPATIAL // 2 :] = 1.0, -1.0
    encoder = rows.flatten(1) * (6.0 / SPATIAL**2)  # latents of about unit variance
    return encoder, torch.linalg.pinv(encoder)


def make_toy_models(directory: Path, seed: int = 0, *, dim: int = 32, depth: int = 2) -> ToyModelFiles:
    """Write seeded random weights for the autoencoder, text encoder and denoiser into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    vae = ToyAutoencoder()
    vae.encoder.weight.data, vae.decoder.weight.data = _patch_codec()
    files = ToyModelFiles(
        directory / "toy_vae.safetensors",
        directory / "toy_text.safetensors",
        directory / "toy_dit.safetensors",
    )
    for model, path in (
        (vae, files.vae),
        (ToyTextEncoder(), files.text_encoder),
        (ToyDenoiser(dim=dim, heads=max(dim // 16, 1), depth=depth), files.dit),
    ):
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return files
