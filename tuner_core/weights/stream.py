"""Streaming a checkpoint into a model built on the meta device, one tensor at a time.

A model constructed under ``torch.device("meta")`` owns no memory. Each stored tensor is read, cast and
assigned in place of its meta placeholder (what ``load_state_dict(assign=True)`` does, without first
building a full state dict), so loading costs about one model's size of memory plus one tensor.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

import attrs
import torch
from torch import nn

from tuner_core.errors import ModelLoadError
from tuner_core.weights.reader import TensorInfo, TensorSource

logger = logging.getLogger(__name__)

#: ``transform(key, tensor) -> {key: tensor, ...}``: rewrite one loaded tensor (for example quantise it and
#: add a scale). The returned mapping replaces the tensor; keys the model lacks become buffers.
#: A transform may also have a ``plan(stored) -> StoredPlan`` method, called once with the checkpoint's
#: ``{model name: TensorInfo}`` before any tensor is read (see :class:`StoredPlan`); it may raise
#: :class:`ModelLoadError` to refuse the checkpoint.
Transform = Callable[[str, torch.Tensor], Mapping[str, torch.Tensor]]


@attrs.frozen
class StoredPlan:
    """What a transform takes from a checkpoint beyond the model's own tensors, in their stored form.

    :param extra: stored names the model does not declare that the transform takes anyway (a checkpoint
        already quantised holds ``<layer>.scale_weight`` tensors); they stream through the transform and
        become buffers instead of being refused as unexpected.
    :param uncast: stored names handed to the transform in their stored dtype (``dtype`` is not applied).
    """

    extra: frozenset[str] = frozenset()
    uncast: frozenset[str] = frozenset()


def _plan(transform: Transform | None, stored: Mapping[str, TensorInfo]) -> StoredPlan:
    plan = getattr(transform, "plan", None)
    return plan(stored) if plan is not None else StoredPlan()


class ChainedTransforms:
    """Transforms applied one after the other (each to all the previous one's outputs); its ``plan`` asks
    each transform's and takes the union. Made by :func:`chain_transforms`."""

    def __init__(self, transforms: list[Transform]) -> None:
        self.transforms = transforms

    def plan(self, stored: Mapping[str, TensorInfo]) -> StoredPlan:
        """The union of the chained transforms' plans."""
        plans = [_plan(t, stored) for t in self.transforms]
        return StoredPlan(
            frozenset().union(*(p.extra for p in plans)), frozenset().union(*(p.uncast for p in plans))
        )

    def __call__(self, key: str, tensor: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every transform in turn."""
        outputs: dict[str, torch.Tensor] = {key: tensor}
        for transform in self.transforms:
            outputs = {name: out for k, t in outputs.items() for name, out in transform(k, t).items()}
        return outputs


def chain_transforms(*transforms: Transform | None) -> Transform | None:
    """One transform doing ``transforms`` in order (``None`` entries skipped; ``None`` if none is left).

    Network files merge before the memory strategies quantise: ``chain_transforms(merge, strategies)``.
    """
    chosen = [t for t in transforms if t is not None]
    if len(chosen) <= 1:
        return chosen[0] if chosen else None
    return ChainedTransforms(chosen)


#: How many names an error message lists per kind before it only counts the rest.
SHOWN_KEYS = 5


@attrs.frozen
class LoadResult:
    """What :func:`load_into_model` did.

    :param source: the checkpoint's description.
    :param loaded: model tensors assigned from the checkpoint.
    :param added: tensors a transform added that the model did not declare (registered as buffers).
    :param ignored: checkpoint tensors the model does not have (only with ``strict=False``).
    :param missing: model tensors the checkpoint lacks, still on the meta device (only with ``strict=False``).
    """

    source: str
    loaded: int
    added: tuple[str, ...] = ()
    ignored: tuple[str, ...] = ()
    missing: tuple[str, ...] = ()


def _listing(keys: list[str], separator: str = ", ") -> str:
    """The first few keys, then a count of the rest."""
    shown = separator.join(keys[:SHOWN_KEYS])
    more = len(keys) - SHOWN_KEYS
    return shown + (f" ... and {more} more" if more > 0 else "")


def mismatch_error(
    description: str,
    model_name: str,
    missing: list[str],
    unexpected: list[tuple[str, TensorInfo]],
    wrong_shape: list[tuple[str, TensorInfo, tuple[int, ...]]],
) -> ModelLoadError:
    """One error naming the checkpoint file(s) and every kind of key mismatch (a few keys each, then counts)."""
    counts = []
    lines = []
    if missing:
        counts.append(f"{len(missing)} missing")
        lines.append(f"  missing from the checkpoint: {_listing(sorted(missing))}")
    if unexpected:
        counts.append(f"{len(unexpected)} unexpected")
        files = sorted({info.file.name for _, info in unexpected})
        lines.append(
            f"  unexpected (not in the model; in {', '.join(files)}): {_listing([k for k, _ in unexpected])}"
        )
    if wrong_shape:
        counts.append(f"{len(wrong_shape)} with the wrong shape")
        shown = [
            f"{key} is {info.shape} in {info.file.name}, the model expects {expected}"
            for key, info, expected in wrong_shape
        ]
        lines.append(f"  wrong shape: {_listing(shown, '; ')}")
    hint = "\nIs this the checkpoint of this model (and does the model config match it)?"
    if any(key.endswith(".scale_weight") for key, _ in unexpected):
        hint = (
            "\nIts .scale_weight tensors are fp8 scales (musubi-tuner's --fp8_scaled format): load it with "
            "--fp8_scaled (tuner generate) or --fp8_base --fp8_scaled (tuner train)."
        )
    return ModelLoadError(
        f"cannot load {description} into {model_name}: keys {', '.join(counts)}.\n" + "\n".join(lines) + hint
    )


def _assign(model: nn.Module, key: str, tensor: torch.Tensor, declared: bool) -> None:
    """Put ``tensor`` in place of the parameter/buffer ``key`` (or add it as a buffer if not ``declared``)."""
    owner_path, _, name = key.rpartition(".")
    try:
        owner = model.get_submodule(owner_path)
    except AttributeError as exc:
        raise ModelLoadError(f"tensor {key!r}: the model has no module {owner_path!r} to hold it") from exc
    if not declared:
        owner.register_buffer(name, tensor, persistent=True)
        return
    old = owner._parameters.get(name)
    if old is not None:
        wants_grad = old.requires_grad and tensor.dtype in (
            torch.float16,
            torch.bfloat16,
            torch.float32,
            torch.float64,
        )
        owner._parameters[name] = nn.Parameter(tensor, requires_grad=wants_grad)
    else:
        owner._buffers[name] = tensor


def load_into_model(
    model: nn.Module,
    source: TensorSource,
    *,
    device: torch.device | str | Callable[[str], torch.device] = "cpu",
    dtype: torch.dtype | None = None,
    keep_dtype: Callable[[str], bool] | None = None,
    transform: Transform | None = None,
    rename: Callable[[str], str | None] | None = None,
    strict: bool = True,
) -> LoadResult:
    """Fill ``model``'s parameters and buffers from ``source``, one tensor at a time.

    The model is usually built on the meta device; every declared tensor is replaced, so it may also be a
    materialised model (its old tensors are freed as they are replaced).

    :param device: where tensors go: one device, or a function of the model's tensor name (block swap keeps
        some blocks' weights on the CPU while the rest load onto the GPU).
    :param dtype: floating-point tensors are cast to it (``None``: keep each stored dtype).
    :param keep_dtype: keys for which the stored dtype is kept even when ``dtype`` is given.
    :param transform: per-tensor rewrite applied after the cast (memory strategies use it).
    :param rename: maps stored names to model names before anything else; ``None`` drops a tensor.
    :param strict: unexpected or missing keys are errors (shape mismatches always are).
    :raises ModelLoadError: naming the file(s) and the mismatching keys.
    """
    expected = {key: tuple(t.shape) for key, t in model.state_dict(keep_vars=True).items()}
    stored: dict[str, tuple[str, TensorInfo]] = {}
    for key, info in source.infos().items():
        name = rename(key) if rename is not None else key
        if name is None:
            continue
        if name in stored:
            raise ModelLoadError(
                f"{source.description}: {stored[name][0]!r} and {key!r} both map to {name!r}"
            )
        stored[name] = (key, info)

    plan = _plan(transform, {name: info for name, (_, info) in stored.items()})
    missing = [key for key in expected if key not in stored]
    unexpected = [
        (name, info) for name, (_, info) in stored.items() if name not in expected and name not in plan.extra
    ]
    wrong_shape = [
        (name, info, expected[name])
        for name, (_, info) in stored.items()
        if name in expected and info.shape != expected[name]
    ]
    if wrong_shape or (strict and (missing or unexpected)):
        raise mismatch_error(source.description, type(model).__name__, missing, unexpected, wrong_shape)

    place = device if callable(device) else (lambda _name: device)
    loaded = 0
    added: list[str] = []
    for name, (key, _) in stored.items():
        if name not in expected and name not in plan.extra:
            continue
        tensor = source.get(key)
        keep = (
            dtype is None
            or not tensor.is_floating_point()
            or name in plan.uncast
            or (keep_dtype is not None and keep_dtype(name))
        )
        target = place(name)
        tensor = tensor.to(device=target, dtype=None if keep else dtype)
        outputs = transform(name, tensor) if transform is not None else {name: tensor}
        for out_name, out in outputs.items():
            declared = out_name in expected
            if not declared:
                added.append(out_name)
            _assign(model, out_name, out.to(place(out_name) if declared else target), declared)
        loaded += 1
        del tensor, outputs

    logger.debug("loaded %d tensors from %s", loaded, source.description)
    return LoadResult(
        source=source.description,
        loaded=loaded,
        added=tuple(added),
        ignored=tuple(name for name, _ in unexpected),
        missing=tuple(missing),
    )
