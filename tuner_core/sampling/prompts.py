"""Prompt files for samples during training, in the reference tool's syntax.

One prompt per line, switches after it: ``a cat walks --w 512 --h 320 --f 37 --d 42 --s 25 --g 10.0
--l 1.0 --n blurry --i start.png --ci control.png --of target_index=1``. Blank lines and lines starting
with ``#`` are skipped.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from tuner_core.errors import ConfigError
from tuner_core.sampling.request import SampleRequest

log = logging.getLogger(__name__)

_NUMBERS: dict[str, tuple[str, type]] = {
    "w": ("width", int),
    "h": ("height", int),
    "f": ("frames", int),
    "d": ("seed", int),
    "s": ("steps", int),
    "g": ("guidance", float),
    "l": ("cfg_scale", float),
}


def parse_prompt_line(line: str, *, where: str = "prompt") -> SampleRequest | None:
    """One :class:`SampleRequest` from a prompt-file line (``None`` for blank and comment lines)."""
    line = line.strip()
    if not line or line.startswith("#"):
        return None
    prompt, *switches = (" " + line).split(" --")
    fields: dict[str, Any] = {"prompt": prompt.strip()}
    controls: list[Path] = []
    extra: dict[str, Any] = {}
    for switch in switches:
        key, _, value = switch.strip().partition(" ")
        value = value.strip()
        if key in _NUMBERS:
            name, kind = _NUMBERS[key]
            try:
                fields[name] = kind(value)
            except ValueError:
                raise ConfigError(f"{where}: --{key} expects a number, got {value!r}") from None
        elif key == "n":
            fields["negative_prompt"] = value
        elif key == "i":
            fields["image_path"] = Path(value)
        elif key == "ci":
            controls.append(Path(value))
        else:
            extra[key] = value  # architecture-specific switches (--of, --fs, ...)
    fields["control_paths"] = tuple(controls)
    fields["extra"] = extra
    return SampleRequest(**fields)


def read_prompt_file(path: Path) -> list[SampleRequest]:
    """Every request of a prompt file (``--sample_prompts``)."""
    if not path.is_file():
        raise ConfigError(f"--sample_prompts {path} does not exist")
    requests = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        request = parse_prompt_line(line, where=f"{path}:{number}")
        if request is not None:
            requests.append(request)
    if not requests:
        raise ConfigError(f"--sample_prompts {path} holds no prompt")
    return requests
