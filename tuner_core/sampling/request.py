"""A request for one generated video."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs


@attrs.frozen
class SampleRequest:
    """What to generate. Fields an architecture does not use are ignored by it.

    :param width: video width in pixels.
    :param height: video height in pixels.
    :param frames: number of frames.
    :param steps: sampling steps.
    :param guidance: the architecture's main guidance value (distilled guidance for FramePack).
    :param cfg_scale: classifier-free guidance scale (1.0 disables the negative pass).
    :param image_path: start image for image-to-video architectures.
    :param control_paths: control images.
    :param extra: architecture-specific settings (from a prompt line's unknown switches, for example).
    """

    prompt: str
    negative_prompt: str = ""
    width: int = 256
    height: int = 256
    frames: int = 1
    steps: int = 20
    guidance: float | None = None
    cfg_scale: float = 1.0
    seed: int | None = None
    image_path: Path | None = None
    control_paths: tuple[Path, ...] = ()
    extra: dict[str, Any] = attrs.field(factory=dict)
