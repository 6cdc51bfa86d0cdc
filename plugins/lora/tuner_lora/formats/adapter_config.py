"""Alpha of diffusers / PEFT files, which keep it in an adapter config rather than in tensors.

A PEFT adapter stores ``r``, ``lora_alpha``, ``rank_pattern`` and ``alpha_pattern`` (a ``LoraConfig``) in
``adapter_config.json``; diffusers writes the same fields into the safetensors metadata under
``lora_adapter_metadata``, each key prefixed with the component (``transformer.lora_alpha``). The update
is ``lora_B @ lora_A * lora_alpha / r`` (``/ sqrt(r)`` with ``use_rslora``); with no config at all it is
``lora_B @ lora_A`` (alpha = rank).
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Mapping
from typing import Any

#: The safetensors metadata key diffusers reads its adapter config from.
METADATA_KEY = "lora_adapter_metadata"
#: peft's ``LoraConfig`` default ``lora_alpha``, used when a config gives no alpha.
PEFT_DEFAULT_ALPHA = 8.0


def read_config(metadata: Mapping[str, str] | None, prefix: str) -> dict[str, Any] | None:
    """The adapter config of a file's ``metadata`` for tensors under ``prefix`` (``transformer.``), or ``None``.

    Keys carrying another component's prefix (``text_encoder.r``) are left out.
    """
    raw = (metadata or {}).get(METADATA_KEY)
    if not raw:
        return None
    try:
        config = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(config, dict):
        return None
    own = {k[len(prefix) :]: v for k, v in config.items() if prefix and k.startswith(prefix)}
    return own or {k: v for k, v in config.items() if "." not in k} or None


def _pattern_value(patterns: Mapping[str, Any], path: str) -> Any:
    """peft's pattern lookup: the first key that matches the end of ``path`` at a module boundary."""
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", path):
            return value
    return None


def config_alpha(config: Mapping[str, Any], path: str, rank: int) -> float:
    """The alpha that gives ``path`` (its module path, prefix removed) the update scale ``config`` gives it."""
    alpha = _pattern_value(config.get("alpha_pattern") or {}, path)
    if alpha is None:
        alpha = config.get("lora_alpha", PEFT_DEFAULT_ALPHA)
    alpha = float(alpha)
    if config.get("use_rslora"):  # peft scales by alpha / sqrt(r); tuner by alpha / r
        alpha *= math.sqrt(rank)
    return alpha


def write_config(
    ranks: Mapping[str, int], alphas: Mapping[str, float], prefix: str, *, lora_bias: bool = False
) -> str:
    """The ``lora_adapter_metadata`` value for layers with these ranks and alphas (by module path);
    ``lora_bias``: the file holds ``lora_B.bias`` tensors (PEFT then gives every ``lora_B`` a bias).

    Patterns are anchored full paths (``^transformer_blocks\\.0\\.attn\\.to_q``) and the targets one full-match
    regular expression, so a layer named like the end of another (``proj_out``) never catches both.
    """
    rank = Counter(ranks.values()).most_common(1)[0][0]
    alpha = Counter(alphas.values()).most_common(1)[0][0]
    config = {
        "r": rank,
        "lora_alpha": alpha,
        "rank_pattern": {"^" + re.escape(p): r for p, r in ranks.items() if r != rank},
        "alpha_pattern": {"^" + re.escape(p): a for p, a in alphas.items() if a != alpha},
        "target_modules": "^(?:" + "|".join(re.escape(p) for p in ranks) + ")$",
    }
    if lora_bias:
        config["lora_bias"] = True
    return json.dumps({f"{prefix}{k}": v for k, v in config.items()}, indent=2, sort_keys=True)
