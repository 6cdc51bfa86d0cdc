"""A request for one generated video."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs


@attrs.frozen
class SampleRequest:
    """What to generate. Fields an architecture does not use are ignored by it.

    The fields are what a prompt line's switches set (see :mod:`tuner_core.sampling.prompts`); ``None``
    means "the architecture's default" wherever a field allows it.

    :param prompt: the text prompt.
    :param negative_prompt: the negative prompt (used when ``cfg_scale`` is not 1).
    :param width: video width in pixels.
    :param height: video height in pixels.
    :param frames: number of frames (training samples, and ``--f`` of frame-counting generators).
    :param steps: sampling steps.
    :param guidance: the architecture's main guidance value (distilled guidance for FramePack).
    :param cfg_scale: classifier-free guidance scale (1.0 disables the negative pass).
    :param seed: random seed (``None``: the caller picks one).
    :param image_path: start image for image-to-video architectures.
    :param control_paths: control images (one-frame inference, for example).
    :param video_seconds: video length in seconds, for architectures that count seconds (FramePack).
    :param video_sections: number of sections; overrides ``video_seconds`` (FramePack).
    :param end_image_path: end image (FramePack's inverted layout).
    :param control_mask_paths: masks of the control images, in the same order.
    :param control_video_path: control video (control-trained architectures).
    :param flow_shift: sigma shift (``None``: the architecture's default).
    :param one_frame: one-frame inference options as written, comma-separated (``target_index=1,no_2x``);
        ``None`` when not asked for.
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
    video_seconds: float | None = None
    video_sections: int | None = None
    end_image_path: Path | None = None
    control_mask_paths: tuple[Path, ...] = ()
    control_video_path: Path | None = None
    flow_shift: float | None = None
    one_frame: str | None = None
    extra: dict[str, Any] = attrs.field(factory=dict)

    @property
    def one_frame_options(self) -> tuple[str, ...]:
        """The ``one_frame`` options one by one, stripped (empty when one-frame inference is not asked)."""
        if self.one_frame is None:
            return ()
        return tuple(item.strip() for item in self.one_frame.split(",") if item.strip())
