"""Entry point of the LoRA plugin (group ``tuner``): registers the network types that are installed."""

from __future__ import annotations

from collections.abc import Callable

from tuner_core import hookimpl
from tuner_lora.lora_network import LoRANetworkType
from tuner_lora.lycoris_merge import lycoris_available


@hookimpl
def tuner_register_networks(register: Callable[[object], None]) -> None:
    """Register plain LoRA (``--network_module lora`` or ``networks.lora_framepack``), and, when the
    lycoris-lora package is installed, LyCORIS (``lycoris.kohya``) and musubi-tuner's LoHa / LoKr names
    (``networks.loha``, ``networks.lokr``) through it; lycoris is imported only when used."""
    register(LoRANetworkType())
    if lycoris_available():
        from tuner_lora.lycoris_network import LohaNetworkType, LokrNetworkType, LycorisNetworkType

        register(LycorisNetworkType())
        register(LohaNetworkType())
        register(LokrNetworkType())
