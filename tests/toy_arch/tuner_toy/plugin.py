"""Entry point of the toy plugin: registers ``--arch toy``."""

from __future__ import annotations

from collections.abc import Callable

from tuner_core import hookimpl
from tuner_toy.architecture import ToyArchitecture


@hookimpl
def tuner_register_architectures(register: Callable[[object], None]) -> None:
    """Register the toy architecture."""
    register(ToyArchitecture())
