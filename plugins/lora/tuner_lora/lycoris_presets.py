"""LyCORIS presets from the architecture's layout, and lycoris's class-level preset state kept per network.

``lycoris.kohya.create_network`` applies its preset to class attributes of ``LycorisNetworkKohya``: each
network created afterwards in the process would see the settings of the last one (a sample after training,
the next test). :func:`isolated_presets` resets those attributes to the package's own defaults before a
creation and puts back whatever was there after it, so every creation sees only its own preset.
"""

from __future__ import annotations

import contextlib
import copy
import re
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

from torch import nn

from tuner_core import ConfigError, ModelLayout
from tuner_lora.lora_network import arg_patterns

#: The class attributes of ``LycorisNetworkKohya`` that ``apply_preset`` writes, plus the saved-name prefix
#: (set from the layout's ``network_prefix``).
PRESET_ATTRIBUTES = (
    "ENABLE_CONV",
    "UNET_TARGET_REPLACE_MODULE",
    "UNET_TARGET_REPLACE_NAME",
    "TEXT_ENCODER_TARGET_REPLACE_MODULE",
    "TEXT_ENCODER_TARGET_REPLACE_NAME",
    "MODULE_ALGO_MAP",
    "NAME_ALGO_MAP",
    "USE_FNMATCH",
    "TARGET_EXCLUDE_NAME",
    "LORA_PREFIX_UNET",
)

_DEFAULTS: dict[str, Any] = {}


def _defaults(network_class: type) -> dict[str, Any]:
    """The class attributes as lycoris defines them, read the first time tuner sees the class."""
    if not _DEFAULTS:
        _DEFAULTS.update({a: copy.deepcopy(getattr(network_class, a)) for a in PRESET_ATTRIBUTES})
    return _DEFAULTS


@contextlib.contextmanager
def isolated_presets(kohya: ModuleType, prefix: str) -> Iterator[str]:
    """Within the block, ``LycorisNetworkKohya`` has lycoris's default class state and saved names start
    with ``prefix``; yields a fresh key under which the caller may put its preset into ``kohya.PRESET``.

    On exit the class attributes are what they were before (also after an error) and the key is removed.
    """
    network_class = kohya.LycorisNetworkKohya
    own = network_class.__dict__
    before = {a: own[a] for a in PRESET_ATTRIBUTES if a in own}
    key = f"tuner-{uuid.uuid4().hex}"
    for name, value in _defaults(network_class).items():
        setattr(network_class, name, copy.deepcopy(value))
    network_class.LORA_PREFIX_UNET = prefix
    try:
        yield key
    finally:
        kohya.PRESET.pop(key, None)
        for name in PRESET_ATTRIBUTES:
            if name in before:
                setattr(network_class, name, before[name])
            elif name in network_class.__dict__:
                delattr(network_class, name)


def preset_settings(network: Any) -> dict[str, Any]:
    """The preset attributes a network was created with (to pin them on the instance)."""
    return {name: copy.deepcopy(getattr(network, name)) for name in PRESET_ATTRIBUTES}


def excluded_leaves(model: nn.Module, layout: ModelLayout, args: Mapping[str, Any]) -> list[str]:
    """Paths of the model's leaf modules that no network may wrap, with the LoRA network's rule: the
    layout's ``network_exclude`` or ``exclude_patterns`` match the path in full and no ``include_patterns``
    does. Only leaves are listed, so an exclusion never hides a whole target block from lycoris."""
    exclude = [re.compile(p) for p in layout.network_exclude] + arg_patterns(args, "exclude_patterns")
    include = arg_patterns(args, "include_patterns")
    return [
        path
        for path, module in model.named_modules()
        if path
        and next(module.children(), None) is None
        and any(p.fullmatch(path) for p in exclude)
        and not any(p.fullmatch(path) for p in include)
    ]


def _named_preset(kohya: ModuleType, value: str) -> dict[str, Any]:
    """A lycoris preset by built-in name (``full``, ``attn-mlp``, ...) or ``.toml`` path."""
    if value in kohya.PRESET:
        return copy.deepcopy(kohya.PRESET[value])
    path = Path(value)
    if not path.is_file():
        raise ConfigError(
            f"--network_args preset={value!r}: not a lycoris preset name ({', '.join(sorted(kohya.PRESET))}) "
            "nor an existing .toml file"
        )
    from lycoris.utils.preset import read_preset

    preset = read_preset(str(path))
    if preset is None:
        raise ConfigError(f"--network_args preset={value}: lycoris could not read this preset file")
    return preset


def build_preset(
    kohya: ModuleType, model: nn.Module, layout: ModelLayout, args: Mapping[str, Any]
) -> dict[str, Any]:
    """The preset a network is created with.

    Without ``preset`` it targets the layout's ``network_targets`` classes (no module names, convolutions
    allowed as in lycoris's ``full``); ``preset=NAME|FILE`` takes lycoris's own preset instead. Either way the
    layout's exclusions and ``exclude_patterns`` / ``include_patterns`` are added as exact leaf paths.
    """
    if args.get("preset") is None:
        preset: dict[str, Any] = {
            "enable_conv": True,
            "unet_target_module": list(layout.network_targets),
            "unet_target_name": [],
            "text_encoder_target_module": [],
            "text_encoder_target_name": [],
        }
    else:
        preset = _named_preset(kohya, str(args["preset"]))
    use_fnmatch = bool(preset.get("use_fnmatch", kohya.LycorisNetworkKohya.USE_FNMATCH))
    # Exact paths: escaped and anchored for lycoris's re.match, as they are for fnmatch.
    leaves = excluded_leaves(model, layout, args)
    exact = leaves if use_fnmatch else [re.escape(path) + r"\Z" for path in leaves]
    preset["exclude_name"] = list(preset.get("exclude_name") or []) + exact
    return preset
