"""Turn what a user passed (a single file, the first of a shard set, a snapshot directory, a hub cache folder)
into the weights file to read and the ``config.json`` that belongs to it.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuner_core import ModelLoadError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class WeightsLocation:
    """Where one model's weights are.

    ``file`` is the weights file (a single file, the first shard, or an index); ``config`` the
    ``config.json`` of a diffusers/transformers folder when there is one.
    """

    file: Path
    config: Path | None


def _hub_snapshot(path: Path) -> Path:
    """``models--org--name`` hub cache folder -> its current snapshot; any other folder is returned as is."""
    snapshots = path / "snapshots"
    if not snapshots.is_dir():
        return path
    ref = path / "refs" / "main"
    if ref.is_file() and (snapshots / ref.read_text().strip()).is_dir():
        return snapshots / ref.read_text().strip()
    found = sorted(p for p in snapshots.iterdir() if p.is_dir())
    if len(found) != 1:
        raise ModelLoadError(
            f"{path}: a hub cache folder with {len(found)} snapshots and no refs/main; "
            "pass the snapshots/<hash> folder you want."
        )
    return found[0]


def _first_match(folder: Path, patterns: tuple[str, ...]) -> Path | None:
    for pattern in patterns:
        hits = sorted(folder.glob(pattern))
        if hits:
            return hits[0]
    return None


def locate_weights(path: Path, *, subfolder: str, patterns: tuple[str, ...], option: str) -> WeightsLocation:
    """Resolve ``path`` for a model stored in ``subfolder`` of a snapshot under one of the file ``patterns``.

    A directory may be the snapshot (``<dir>/<subfolder>/<file>``), the subfolder itself, or a
    ``models--org--name`` hub cache folder. A ``config.json`` beside the weights is used only when the file
    has one of the standard names (a renamed single file, as Comfy ships, never picks up a stray config).
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise ModelLoadError(f"{option} {path}: no such file or directory.")
    if path.is_dir():
        root = _hub_snapshot(path)
        folder = root / subfolder if (root / subfolder).is_dir() else root
        file = _first_match(folder, patterns)
        if file is None:
            raise ModelLoadError(
                f"{option} {path}: no weights found; looked for {' or '.join(patterns)} in {folder}. "
                f"Pass the weights file itself or a snapshot folder with a '{subfolder}/' subfolder."
            )
    else:
        file = path
    standard = any(file.match(p) for p in patterns)
    config = file.parent / "config.json"
    return WeightsLocation(file=file, config=config if standard and config.is_file() else None)


def read_config(
    location: WeightsLocation, *, model_types: tuple[str, ...], nested: str | None = None
) -> dict[str, Any] | None:
    """The ``config.json`` beside the weights as a dict, if it describes one of ``model_types``.

    ``nested`` names a sub-config to look in (``text_config`` of a full CLIP/LLaVA config, ``vision_config``
    of a full SigLIP one). A config of another model type is ignored (with a log line) so the shapes decide.
    Private entries (``_name_or_path``, ``_attn_implementation_autoset``...) are left out: written by one
    transformers version, they can change what another builds (4.46 builds eager attention for a config
    marked autoset, where a config read off the shapes gets SDPA), so every format gives the same model.
    """
    if location.config is None:
        return None
    try:
        config = json.loads(location.config.read_text())
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{location.config}: unreadable config.json ({exc}).") from None
    if nested and isinstance(config.get(nested), dict) and config.get("model_type") not in model_types:
        config = config[nested]
    kind = config.get("model_type") or config.get("_class_name")
    if kind not in model_types:
        logger.info(
            "Ignoring %s (describes %r); inferring the config from tensor shapes.", location.config, kind
        )
        return None
    return {key: value for key, value in config.items() if not key.startswith("_")}
