"""Entry point of the LoRA plugin (group ``tuner``): registers the network types."""

from __future__ import annotations

from collections.abc import Callable

from tuner_core import hookimpl
from tuner_lora.lora_network import LoRANetworkType


@hookimpl
def tuner_register_networks(register: Callable[[object], None]) -> None:
    """Register plain LoRA (``--network_module lora`` or ``networks.lora_framepack``)."""
    register(LoRANetworkType())
