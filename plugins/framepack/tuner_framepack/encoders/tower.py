"""Loading a transformers encoder tower (CLIP-L text, SigLIP vision) from any of its published files.

Both towers are stored with a tower prefix (``text_model.`` / ``vision_model.``: the published files, and
anything transformers 4.x saved) or without it (``save_pretrained`` of transformers 5), sometimes beside
tensors of the other tower, and the transformers class may or may not use the prefix itself (4.x does, 5.x
does not); a :class:`TowerSpec` says which names are whose, and :func:`load_tower` does the rest.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import torch

from tuner_core.weights import Transform
from tuner_framepack.encoders.identify import require_model
from tuner_framepack.encoders.locate import locate_weights, read_config
from tuner_framepack.encoders.streaming import build_empty, load_weights, open_weights, tensor_shapes


@attrs.frozen
class TowerSpec:
    """What distinguishes one tower's files and classes."""

    kind: str  #: the model kind :func:`require_model` checks for
    subfolder: str  #: the tower's folder in a snapshot
    patterns: tuple[str, ...]  #: file names to look for in that folder
    model_types: tuple[str, ...]  #: accepted ``model_type`` values of a config.json
    nested: str  #: the key of the tower's config inside a two-tower config.json
    prefix: str  #: the tower's own name prefix
    foreign: re.Pattern[str]  #: names of tensors this tower does not have
    config_class: type
    model_class: type
    config_from_shapes: Callable[[dict[str, tuple[int, ...]], str], Any]

    def file_name(self, name: str) -> str | None:
        """A stored name -> the canonical name (without the prefix), or ``None`` for another tower's tensor."""
        if not name.startswith(self.prefix):
            at = name.find("." + self.prefix)
            if at >= 0:  # "cond_stage_model.transformer.text_model.x" and the like
                name = name[at + 1 :]
        if self.foreign.search(name):
            return None
        return name.removeprefix(self.prefix)


def load_tower(
    spec: TowerSpec,
    path: Path,
    *,
    dtype: torch.dtype,
    device: torch.device | str,
    option: str,
    transform: Transform | None = None,
) -> Any:
    """Load the tower of ``spec`` from a single file, a shard set or a snapshot directory, streamed in place."""
    location = locate_weights(Path(path), subfolder=spec.subfolder, patterns=spec.patterns, option=option)
    with open_weights(location, option) as source:
        require_model(source, spec.kind, option)
        config_dict = read_config(location, model_types=spec.model_types, nested=spec.nested)
        config = (
            spec.config_class(**config_dict)
            if config_dict
            else spec.config_from_shapes(tensor_shapes(source, spec.file_name), source.description)
        )
        model = build_empty(lambda: spec.model_class(config))
        # The model's own names may or may not carry the prefix, depending on the transformers version.
        model_name = {n.removeprefix(spec.prefix): n for n in model.state_dict()}

        def rename(name: str) -> str | None:
            canonical = spec.file_name(name)
            return None if canonical is None else model_name.get(canonical, canonical)

        load_weights(model, source, rename, device=device, dtype=dtype, option=option, transform=transform)
    return model
