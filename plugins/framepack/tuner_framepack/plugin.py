"""Entry point of the FramePack plugin (group ``tuner``): registers the architecture.

Kept import-light: models and encoders are imported only when a command needs them.
"""

from __future__ import annotations

from collections.abc import Callable

from tuner_core import hookimpl
from tuner_framepack.architecture import FramePackArchitecture


@hookimpl
def tuner_register_architectures(register: Callable[[object], None]) -> None:
    """Register FramePack as ``--arch framepack``."""
    register(FramePackArchitecture())
