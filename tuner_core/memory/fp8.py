"""``--fp8_base`` / ``--fp8`` and ``--fp8_scaled`` (and ``--fp8_fast``): block weights stored in float8.

Which weights: those the architecture's :class:`~tuner_core.architecture.ModelLayout` marks quantisable
(:func:`is_quantisable`; for FramePack the 440 Linear weights inside the blocks whose names do not contain
``norm``, the layers LoRA targets). While the checkpoint streams in, each such weight is turned into fp8 on
its own (:meth:`Fp8Weights.transform_tensor`), so host memory never holds the high-precision model:

- ``--fp8_base`` alone: cast to float8_e4m3fn (clamped to ±448);
- ``--fp8_scaled``: musubi-tuner's format (:mod:`tuner_core.memory.fp8_format`): block-wise scales over 64
  input columns stored as ``<layer>.scale_weight``, so a merged model saved afterwards is in the reference's
  format;
- ``--fp8_fast`` (on CUDA compute capability 8.9+): per-channel scales, multiplied with ``torch._scaled_mm``.

A checkpoint already stored in fp8 (with or without ``scale_weight`` tensors) is used as it is
(:meth:`Fp8Weights.plan_load`); one whose scales do not fit is refused, naming the tensor. After loading,
every Linear with an fp8 weight becomes an :class:`~tuner_core.memory.fp8_linear.Fp8Linear` that computes
in the compute dtype (:meth:`Fp8Weights.apply`). Networks (LoRA) wrap those layers afterwards and train in
their own dtype; the fp8 weights never take gradients.

A plugin's own fp8 option for a model no memory strategy handles (FramePack's ``--fp8_llm`` for its LLaMA
text encoder) uses the same cast and the same layer, through two public functions:
:func:`fp8_linear_transform` (a loader transform storing the model's Linear weights in fp8 while they
stream in) and :func:`use_fp8_linears` (those layers then compute through :class:`Fp8Linear`).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from typing import ClassVar

import attrs
import torch
from torch import nn

from tuner_core.architecture import ModelLayout
from tuner_core.config.train_options import MEMORY
from tuner_core.errors import ConfigError, ModelLoadError, PluginError
from tuner_core.memory.fp8_format import (
    FP8_DTYPES,
    SCALE_SUFFIX,
    WEIGHT_SUFFIX,
    cast_to_fp8,
    quantise_weight,
    scale_key,
    scale_problem,
    weight_key,
)
from tuner_core.memory.fp8_linear import Fp8Linear, fp8_matmul_problem, make_fp8_linear
from tuner_core.memory.strategy import MemorySettings, MemoryStrategy
from tuner_core.options import option
from tuner_core.weights.reader import TensorInfo
from tuner_core.weights.stream import StoredPlan, Transform

log = logging.getLogger(__name__)


@attrs.frozen(kw_only=True, slots=False)
class Fp8Options:
    """The option the fp8 strategy adds to ``tuner train`` and ``tuner generate``."""

    fp8_fast: bool = option(
        False,
        help="Multiply the fp8 block weights in fp8 with torch._scaled_mm (CUDA GPUs of compute capability "
        "8.9+: RTX 40xx, L4, L40, H100); the weights get per-channel scales. Implies --fp8_scaled. "
        "Elsewhere each weight is upcast per layer instead, and tuner says so once.",
        group=MEMORY,
    )


def is_quantisable(name: str, shape: tuple[int, ...], layout: ModelLayout) -> bool:
    """Whether ``--fp8_base`` stores the model tensor ``name`` of ``shape`` in fp8.

    A 2-D ``.weight`` that ``layout.quantise_weights`` matches (by default: that lies inside one of
    ``layout.block_lists``), and that no ``layout.keep_high_precision`` pattern matches.
    """
    if not name.endswith(WEIGHT_SUFFIX) or len(shape) != 2:
        return False
    if layout.quantise_weights:
        chosen = any(re.search(pattern, name) for pattern in layout.quantise_weights)
    else:
        chosen = any(name.startswith(path + ".") for path in layout.block_lists)
    return chosen and not any(re.search(pattern, name) for pattern in layout.keep_high_precision)


def quantisable_names(shapes: Mapping[str, tuple[int, ...]], layout: ModelLayout) -> list[str]:
    """The names among ``shapes`` (a state dict's ``{name: shape}``) that fp8 stores, in order."""
    return [name for name, shape in shapes.items() if is_quantisable(name, tuple(shape), layout)]


class _LinearWeightsToFp8:
    """The transform :func:`fp8_linear_transform` returns: the named weights cast to fp8."""

    def __init__(self, names: frozenset[str]) -> None:
        self.names = names

    def __call__(self, key: str, tensor: torch.Tensor) -> dict[str, torch.Tensor]:
        return {key: cast_to_fp8(tensor) if key in self.names else tensor}


def fp8_linear_transform(model: nn.Module, *, select: Callable[[str], bool] | None = None) -> Transform:
    """A loader transform that stores ``model``'s Linear weights in float8_e4m3fn while they stream in.

    Give it to :func:`tuner_core.weights.load_into_model` (``transform=``) for ``model`` built on the meta
    device (after any transform the loader was handed: ``chain_transforms(transform, fp8)``); afterwards call
    :func:`use_fp8_linears` on the loaded model. Each 2-D ``<path>.weight`` of an ``nn.Linear`` is cast
    without a scale (clamped to ±448, NaN as 0, as ``--fp8_base`` alone does); biases, embeddings, norms and
    every other tensor keep the loader's ``dtype``.

    :param select: which Linear weights, by model name (``None``: all of them).
    """
    names: set[str] = set()
    for path, module in model.named_modules():
        name = f"{path}.weight" if path else "weight"
        if isinstance(module, nn.Linear) and module.weight.dim() == 2 and (select is None or select(name)):
            names.add(name)
    return _LinearWeightsToFp8(frozenset(names))


def use_fp8_linears(model: nn.Module) -> int:
    """Make every Linear of ``model`` that holds a float8 weight compute through :class:`Fp8Linear`.

    Each such layer then upcasts its weight to the compute dtype on every call (autocast's dtype under
    autocast, else the input's), on CPU and GPU alike; only the class changes (parameters and state-dict
    names stay). Layers already converted are left as they are. Returns how many layers hold fp8 weights.

    :raises PluginError: an fp8 tensor sits in a module that is not a Linear, which could not compute with it.
    """
    linears = _fp8_linears(model)
    for module in linears.values():
        if not isinstance(module, Fp8Linear):
            make_fp8_linear(module)
    return len(linears)


def _fp8_fast(settings: MemorySettings) -> bool:
    # The strategy is always handed its own options (strategy_settings); other settings never ask.
    return isinstance(settings.options, Fp8Options) and settings.options.fp8_fast


def _mode(settings: MemorySettings) -> str | None:
    """``"block"`` (--fp8_scaled), ``"channel"`` (--fp8_fast where fp8 matmul runs) or ``None`` (plain)."""
    if _fp8_fast(settings) and torch.cuda.is_available() and fp8_matmul_problem("cuda") is None:
        return "channel"
    if settings.fp8_scaled or _fp8_fast(settings):
        return "block"
    return None


def _stored_dtype(info: TensorInfo) -> torch.dtype | None:
    return getattr(torch, info.dtype, None)


class Fp8Weights(MemoryStrategy):
    """Quantisable weights in float8_e4m3fn, scaled (``--fp8_scaled``) or not (``--fp8_base`` alone)."""

    name: ClassVar[str] = "fp8"
    order: ClassVar[int] = 10
    options: ClassVar[Mapping[str, type]] = {"train": Fp8Options, "generate": Fp8Options}

    def __init__(self) -> None:
        self._said: set[str] = set()

    def _say_once(self, message: str) -> None:
        if message not in self._said:
            self._said.add(message)
            log.warning(message)

    def enabled(self, settings: MemorySettings) -> bool:
        """``--fp8_base`` (``--fp8`` in generate), ``--fp8_scaled`` or ``--fp8_fast``."""
        return settings.fp8_base or settings.fp8_scaled or _fp8_fast(settings)

    def plan_load(
        self, stored: Mapping[str, TensorInfo], layout: ModelLayout, settings: MemorySettings
    ) -> StoredPlan:
        """Take a checkpoint's fp8 weights and their ``scale_weight`` tensors as they are stored.

        :raises ModelLoadError: a scale whose weight is missing, not quantisable, not stored in fp8, or
            whose shape fits no layout of that weight.
        :raises ConfigError: full fine-tuning was asked for (fp8 weights cannot be trained).
        """
        _refuse_full_fine_tuning(settings)
        extra: set[str] = set()
        uncast: set[str] = set()
        for name, info in stored.items():
            if name.endswith(SCALE_SUFFIX):
                _check_stored_scale(name, info, stored, layout)
                extra.add(name)
                uncast |= {name, weight_key(name)}
            elif _stored_dtype(info) in FP8_DTYPES and is_quantisable(name, info.shape, layout):
                uncast.add(name)
        if uncast:
            log.info(
                "the checkpoint holds %d fp8 weights (%d with scales); they are used as stored",
                len(uncast) - len(extra),
                len(extra),
            )
        return StoredPlan(frozenset(extra), frozenset(uncast))

    def transform_tensor(
        self, key: str, tensor: torch.Tensor, layout: ModelLayout, settings: MemorySettings
    ) -> Mapping[str, torch.Tensor]:
        """Store a quantisable weight in fp8 (with its scale under ``--fp8_scaled``); pass the rest."""
        if tensor.dtype in FP8_DTYPES or not is_quantisable(key, tuple(tensor.shape), layout):
            return {key: tensor}  # already fp8 (stored so, see plan_load), a stored scale, or high precision
        mode = _mode(settings)
        if mode is None:
            return {key: cast_to_fp8(tensor)}
        quantised, scale = quantise_weight(tensor, mode, key=key)
        return {key: quantised, scale_key(key): scale}

    def apply(
        self, model: nn.Module, layout: ModelLayout, settings: MemorySettings, device: torch.device
    ) -> None:
        """Make every Linear holding an fp8 weight compute through :class:`Fp8Linear`.

        :raises ConfigError: full fine-tuning was asked for (fp8 weights cannot be trained).
        :raises PluginError: an fp8 tensor or a scale sits in a module that is not a Linear.
        """
        _refuse_full_fine_tuning(settings)
        fast = self._fast(settings, device)
        linears = _fp8_linears(model)
        scaled = sum("scale_weight" in module._buffers for module in linears.values())
        for module in linears.values():
            make_fp8_linear(module, fast=fast)
        on_fast = sum(module.fp8_fast for module in linears.values())
        log.info(
            "fp8: %d Linear layers hold fp8 weights (%d scaled, %d multiplied in fp8)",
            len(linears),
            scaled,
            on_fast,
        )
        if fast and on_fast < len(linears):
            self._say_once(
                f"--fp8_fast: {len(linears) - on_fast} of {len(linears)} fp8 layers cannot use fp8 matmul "
                "(block-wise scales or sizes not a multiple of 16); they upcast their weights instead"
            )

    def _fast(self, settings: MemorySettings, device: torch.device) -> bool:
        """Whether ``--fp8_fast`` can act on ``device``; says once why not."""
        if not _fp8_fast(settings):
            return False
        if not settings.fp8_scaled:
            self._say_once("--fp8_fast implies --fp8_scaled: the block weights are stored with scales")
        problem = fp8_matmul_problem(device)
        if problem is not None:
            self._say_once(f"--fp8_fast: {problem}; each fp8 weight is upcast per layer instead")
            return False
        return True


def _fp8_linears(model: nn.Module) -> dict[str, nn.Linear]:
    """The Linear layers of ``model`` with fp8 weights, by path; refuses fp8 tensors anywhere else."""
    found: dict[str, nn.Linear] = {}
    for path, module in model.named_modules():
        own = [n for n, p in module.named_parameters(recurse=False) if p.dtype in FP8_DTYPES]
        if isinstance(module, nn.Linear) and own == ["weight"]:
            found[path] = module
            continue
        if isinstance(module, Fp8Linear):
            found[path] = module
            continue
        if own or "scale_weight" in module._buffers:
            where = f"{path}.{own[0] if own else 'scale_weight'}"
            raise PluginError(
                f"{where} is stored in fp8, but {type(module).__name__} is not a Linear layer, so it cannot "
                "compute with it; the architecture's ModelLayout.quantise_weights / keep_high_precision "
                "must leave it out"
            )
    return found


def _check_stored_scale(
    name: str, info: TensorInfo, stored: Mapping[str, TensorInfo], layout: ModelLayout
) -> None:
    """Refuse a stored ``scale_weight`` that cannot be used with its weight, saying why."""
    weight = weight_key(name)
    found = stored.get(weight)
    why = None
    if found is None:
        why = f"the checkpoint has no {weight} for it to scale"
    elif not is_quantisable(weight, found.shape, layout):
        why = f"{weight} is not one of the weights this architecture stores in fp8"
    elif _stored_dtype(found) not in FP8_DTYPES:
        why = f"{weight} is stored in {found.dtype}, not in fp8"
    else:
        why = scale_problem(found.shape, info.shape)
    if why is not None:
        raise ModelLoadError(
            f"{info.file}: cannot use the fp8 scale {name}: {why}. Load a checkpoint in bf16/fp16/fp32 (tuner "
            "quantises it while loading) or one saved with --fp8_scaled by tuner or musubi-tuner"
        )


def _refuse_full_fine_tuning(settings: MemorySettings) -> None:
    """fp8 weights take no gradients: training needs a network on top (checked before the load too)."""
    if settings.full_fine_tuning:
        raise ConfigError(
            "--fp8_base stores the base model's block weights in fp8, which cannot be trained: give "
            "--network_module (LoRA) or leave --fp8_base out for full fine-tuning"
        )
