"""Create the toy models' weight files (random, seeded) for tests and the demo."""

from __future__ import annotations

from pathlib import Path

import attrs
import torch
from safetensors.torch import save_file

from tuner_toy.models import ToyAutoencoder, ToyDenoiser, ToyTextEncoder


@attrs.frozen
class ToyModelFiles:
    """Paths of the three toy weight files."""

    vae: Path
    text_encoder: Path
    dit: Path


def make_toy_models(directory: Path, seed: int = 0) -> ToyModelFiles:
    """Write seeded random weights for the autoencoder, text encoder and denoiser into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    vae = ToyAutoencoder()
    # Orthonormal rows make the decoder (the transpose) the exact pseudo-inverse of the encoder.
    q, _ = torch.linalg.qr(torch.randn(vae.encoder.in_features, vae.encoder.out_features))
    vae.encoder.weight.data = q.T.contiguous() * 2.0
    vae.decoder.weight.data = q.contiguous() / 2.0
    files = ToyModelFiles(
        directory / "toy_vae.safetensors",
        directory / "toy_text.safetensors",
        directory / "toy_dit.safetensors",
    )
    for model, path in ((vae, files.vae), (ToyTextEncoder(), files.text_encoder), (ToyDenoiser(), files.dit)):
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return files
