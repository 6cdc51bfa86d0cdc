"""Tensor names of LoRA files: which layer a tensor belongs to, which part it is, and in which spelling.

Two spellings exist for the same layer ``transformer_blocks.0.attn.to_q``:

- kohya / musubi-tuner / tuner: ``lora_unet_transformer_blocks_0_attn_to_q.lora_down.weight``,
  ``.lora_up.weight`` and ``.alpha`` (the network prefix, then the module path with ``_`` for ``.``);
- diffusers / PEFT / ComfyUI: ``transformer.transformer_blocks.0.attn.to_q.lora_A.weight`` and
  ``.lora_B.weight`` (the module path itself, after a ``transformer.``, ``diffusion_model.`` or
  ``base_model.model.`` prefix), sometimes with ``.alpha``.

Going from a module path to the kohya name is safe; going back is not (``ff_context`` and ``ff.context``
would both give ``ff_context``), so :func:`kohya_names` maps back through the model's own module paths.
"""

from __future__ import annotations

from collections.abc import Iterable

import attrs

DOWN, UP, ALPHA, UP_BIAS = "down", "up", "alpha", "up_bias"
#: Part suffixes of both spellings; the first match wins (longest first). ``lora_B.bias`` is PEFT's
#: ``lora_bias=True``: the up projection's bias, a scaled update of the layer's bias.
SUFFIXES = (
    (".lora_down.weight", DOWN),
    (".lora_up.weight", UP),
    (".lora_up.bias", UP_BIAS),
    (".lora_A.weight", DOWN),
    (".lora_B.weight", UP),
    (".lora_B.bias", UP_BIAS),
    (".alpha", ALPHA),
)
#: What PEFT, then diffusers / ComfyUI files put in front of the module path.
PREFIX_GROUPS = (("base_model.model.",), ("diffusion_model.", "transformer."))


@attrs.frozen
class LoraKey:
    """One tensor name of a LoRA file, taken apart.

    :param module: the layer's name in the file's own spelling, without any prefix
        (``transformer_blocks.0.attn.to_q`` or ``transformer_blocks_0_attn_to_q``).
    :param part: :data:`DOWN`, :data:`UP`, :data:`UP_BIAS` or :data:`ALPHA`.
    :param dotted: the diffusers / PEFT spelling (a module path) rather than the kohya one.
    :param prefix: what came before ``module`` (``lora_unet_``, ``diffusion_model.``, ...).
    """

    module: str
    part: str
    dotted: bool
    prefix: str


def parse_key(key: str, network_prefix: str) -> LoraKey | None:
    """``key`` taken apart, or ``None`` if it is no LoRA tensor (LoHa, DoRA scale, a layer's own bias, ...)."""
    suffix, part = next(((s, p) for s, p in SUFFIXES if key.endswith(s)), (None, None))
    if suffix is None or part is None:
        return None
    name = key[: -len(suffix)]
    prefix = ""
    for group in PREFIX_GROUPS:  # at most one of each group, in this order
        found = next((p for p in group if name.startswith(p) and len(name) > len(p)), None)
        if found is not None:
            prefix, name = prefix + found, name[len(found) :]
    kohya = f"{network_prefix}_"
    if name.startswith(kohya) and "." not in name:
        return LoraKey(name[len(kohya) :], part, dotted=False, prefix=prefix + kohya)
    return LoraKey(name, part, dotted=True, prefix=prefix)


def kohya_name(network_prefix: str, module_path: str) -> str:
    """The saved name of the adapter on ``module_path`` (``lora_unet_transformer_blocks_0_attn_to_q``)."""
    return f"{network_prefix}_{module_path.replace('.', '_')}"


@attrs.frozen
class NameMap:
    """kohya names of a model's layers, mapped back to their module paths."""

    paths: dict[str, str]
    #: kohya names that two module paths share (they cannot be mapped back)
    ambiguous: dict[str, tuple[str, ...]]

    def path(self, kohya: str) -> str | None:
        """The module path of a kohya name (``None``: no layer of the model, or ambiguous)."""
        return self.paths.get(kohya)


def kohya_names(module_paths: Iterable[str], network_prefix: str) -> NameMap:
    """The :class:`NameMap` of a model whose layers are ``module_paths``."""
    found: dict[str, list[str]] = {}
    for path in module_paths:
        found.setdefault(kohya_name(network_prefix, path), []).append(path)
    unique = {name: paths[0] for name, paths in found.items() if len(paths) == 1}
    clashes = {name: tuple(paths) for name, paths in found.items() if len(paths) > 1}
    return NameMap(unique, clashes)
