"""``--scale_weight_norms``: max-norm regularisation of the trained network after each optimizer step."""

from __future__ import annotations

import logging
from typing import Any

import torch

log = logging.getLogger(__name__)

#: Tracker names of the figures, as the reference logs them.
KEYS_SCALED, MEAN_NORM, MAX_NORM = (
    "max_norm/keys_scaled",
    "max_norm/average_key_norm",
    "max_norm/max_key_norm",
)


def scale_weight_norms(step_module: torch.nn.Module, max_norm: float, accelerator: Any) -> dict[str, float]:
    """Cap the network's update norms at ``max_norm``; return the step's figures for the logs.

    The network does the work (:meth:`~tuner_core.network.Network.apply_max_norm_regularization`); one that
    cannot, or full fine-tuning, is warned about once and left alone.
    """
    network = getattr(accelerator.unwrap_model(step_module), "network", None)
    apply = getattr(network, "apply_max_norm_regularization", None)
    if apply is None:
        if not getattr(step_module, "_max_norm_warned", False):
            step_module._max_norm_warned = True
            log.warning(
                "--scale_weight_norms: the trained %s has no max-norm regularisation; ignored",
                "network" if network is not None else "model (no --network_module)",
            )
        return {}
    keys_scaled, mean_norm, max_norm_after = apply(max_norm, accelerator.device)
    log.debug(
        "max norm: %d keys scaled, mean norm %.4g, max norm %.4g", keys_scaled, mean_norm, max_norm_after
    )
    return {KEYS_SCALED: float(keys_scaled), MEAN_NORM: float(mean_norm), MAX_NORM: float(max_norm_after)}
