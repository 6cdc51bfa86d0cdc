"""Writing one generated video: its latent file, its video or its images, with the settings as metadata.

``tuner generate`` and samples during training both come here, so a video is written one way. Pixels
never exist as a whole: the architecture decodes run after run of frames into a
:class:`~tuner_core.media.write.SampleWriter`, which encodes each as it arrives.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
import torch
from safetensors import SafetensorError, safe_open

from tuner_core.architecture import Architecture
from tuner_core.errors import ConfigError
from tuner_core.media.write import SampleWriter
from tuner_core.plugins import Plugins
from tuner_core.sampling.request import SampleRequest
from tuner_core.weights.save import save_safetensors

#: The tensor name of a saved latent file (the reference's).
LATENT_KEY = "latent"
#: What each ``--output_type`` writes.
LATENT_OUTPUTS = ("latent", "both", "latent_images")
PIXEL_OUTPUTS = {"video": "video", "both": "video", "images": "images", "latent_images": "images"}

__all__ = ["LATENT_KEY", "generation_metadata", "read_latent_file", "read_latent_header", "write_generated"]


def generation_metadata(request: SampleRequest, seed: int, fps: float) -> dict[str, str]:
    """The settings of one generated video as text, under the reference's latent-file keys.

    Every set field of the request is included; architecture settings come from ``request.extra``. Of
    ``video_seconds`` and ``video_sections`` only the one that fixed the length is written: the sections
    when given (they override the seconds), so the file never states a length the video does not have.
    """
    values: dict[str, Any] = {
        "seeds": seed,
        "prompt": request.prompt,
        "height": request.height,
        "width": request.width,
        "infer_steps": request.steps,
        "guidance_scale": request.cfg_scale,
        "fps": fps,
    }
    optional = {
        "negative_prompt": request.negative_prompt,
        "embedded_cfg_scale": request.guidance,
        "video_seconds": request.video_seconds if request.video_sections is None else None,
        "video_sections": request.video_sections,
        "flow_shift": request.flow_shift,
        "image_path": request.image_path,
        "end_image_path": request.end_image_path,
    }
    values.update({k: v for k, v in optional.items() if v not in (None, "")})
    values.update(request.extra)
    return {key: str(value) for key, value in values.items()}


def write_generated(
    latents: torch.Tensor,
    *,
    architecture: Architecture,
    plugins: Plugins,
    models: Mapping[str, Any],
    options: Any,
    directory: Path,
    stem: str,
    output_type: str,
    fps: float,
    metadata: Mapping[str, str] | None,
) -> dict[str, list[Path]]:
    """Write ``latents`` as ``output_type`` asks under ``directory``; return the files by kind.

    ``<stem>_latent.safetensors`` holds the latents (key ``latent``) for ``latent``, ``both`` and
    ``latent_images``; the video (``<stem>.mp4``) or images (``<stem>/0000.png``, ...) are decoded
    through the ``tuner_decode_latents`` hook for the others.
    """
    written: dict[str, list[Path]] = {}
    if output_type in LATENT_OUTPUTS:
        path = directory / f"{stem}_latent.safetensors"
        save_safetensors({LATENT_KEY: latents.detach().cpu().contiguous()}, path, metadata)
        written["latent"] = [path]
    kind = PIXEL_OUTPUTS.get(output_type)
    if kind is not None:
        images = kind == "images"
        with SampleWriter(directory, stem, fps, images=images, metadata=metadata) as writer:
            plugins.hook.tuner_decode_latents(
                architecture=architecture, models=models, latents=latents, options=options, sink=writer
            )
        written[kind] = writer.paths
    return written


@attrs.frozen
class LatentFile:
    """A saved latent video: the tensor and the settings it was generated with."""

    path: Path
    latents: torch.Tensor
    metadata: dict[str, str]


def read_latent_header(path: Path) -> dict[str, str]:
    """The metadata of a latent file, reading its header only (pre-flight of ``--latent_path``).

    :raises ConfigError: as :func:`read_latent_file`.
    """
    return _read(path, tensor=False).metadata


def read_latent_file(path: Path) -> LatentFile:
    """Read a latent file that ``tuner generate --output_type latent`` (or the reference) wrote.

    :raises ConfigError: naming the file, when it is not a safetensors file or holds no ``latent`` tensor.
    """
    return _read(path, tensor=True)


def _read(path: Path, *, tensor: bool) -> LatentFile:
    try:
        with safe_open(str(path), framework="pt") as handle:
            names = list(handle.keys())
            if LATENT_KEY not in names:
                raise ConfigError(
                    f"--latent_path {path}: not a latent file (it holds "
                    + (", ".join(names[:3]) or "no tensors")
                    + f", not {LATENT_KEY!r}); give a *_latent.safetensors file that tuner generate wrote"
                )
            latents = handle.get_tensor(LATENT_KEY) if tensor else torch.empty(0)
            return LatentFile(path, latents, dict(handle.metadata() or {}))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ConfigError(f"--latent_path {path}: not a safetensors file ({exc})") from exc
