"""The default training loss: flow-matching MSE with the SD3 loss weightings."""

from __future__ import annotations

import math

import torch


def loss_weights(sigmas: torch.Tensor, scheme: str) -> torch.Tensor | None:
    """Per-element loss weight for ``scheme`` at noise levels ``sigmas`` (shape (B,)); ``None`` means 1.

    ``sigma_sqrt`` weighs by 1/sigma^2; ``cosmap`` by 2 / (pi * (1 - 2 sigma + 2 sigma^2)). The other
    schemes only shape how sigmas are drawn and weigh every element equally.
    """
    if scheme == "sigma_sqrt":
        return sigmas.float() ** -2.0
    if scheme == "cosmap":
        bot = 1 - 2 * sigmas.float() + 2 * sigmas.float() ** 2
        return 2 / (math.pi * bot)
    return None


def weighted_mse(
    prediction: torch.Tensor, target: torch.Tensor, sigmas: torch.Tensor, scheme: str
) -> torch.Tensor:
    """Mean of the squared error, each batch element weighted by :func:`loss_weights`."""
    error = (prediction.float() - target.float()) ** 2
    weights = loss_weights(sigmas, scheme)
    if weights is not None:
        error = error * weights.to(error.device).view(-1, *([1] * (error.ndim - 1)))
    return error.mean()
