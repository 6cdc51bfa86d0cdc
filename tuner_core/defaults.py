"""The core's own hook implementations: the last answer of every per-call hook.

Registered like any plugin (first, so it runs last). Each per-call hook asks the architecture object,
so an architecture plugin only writes methods; another plugin can still take over by answering first.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from tuner_core.hookspecs import hookimpl

if TYPE_CHECKING:
    import torch

    from tuner_core.architecture import Architecture
    from tuner_core.cache.record import CacheRecord
    from tuner_core.data.items import MediaSample
    from tuner_core.sampling.request import SampleRequest


@hookimpl(trylast=True)
def tuner_load_model(architecture: Architecture, component: str, options: Any, device: torch.device) -> Any:
    """Load a component through the architecture."""
    return architecture.load_component(component, options, device)


@hookimpl(trylast=True)
def tuner_encode_latents(
    architecture: Architecture, samples: Sequence[MediaSample], models: Mapping[str, Any], options: Any
) -> list[list[CacheRecord]]:
    """Encode media through the architecture."""
    return architecture.encode_latents(samples, models, options)


@hookimpl(trylast=True)
def tuner_encode_text(
    architecture: Architecture, captions: Sequence[str], models: Mapping[str, Any], options: Any
) -> list[dict[str, torch.Tensor]]:
    """Encode captions through the architecture."""
    return architecture.encode_text(captions, models, options)


@hookimpl(trylast=True)
def tuner_compute_loss(
    prediction: torch.Tensor, target: torch.Tensor, sigmas: torch.Tensor, options: Any
) -> torch.Tensor:
    """Mean squared error, weighted per element by ``options.weighting_scheme``."""
    from tuner_core.training.loss import weighted_mse

    return weighted_mse(prediction, target, sigmas, getattr(options, "weighting_scheme", "none"))


@hookimpl(trylast=True)
def tuner_sample(
    architecture: Architecture,
    models: Mapping[str, Any],
    request: SampleRequest,
    options: Any,
    generator: torch.Generator,
) -> torch.Tensor:
    """Sample through the architecture."""
    return architecture.sample(models, request, options, generator)


@hookimpl
def tuner_register_memory_strategies(register: Callable[[object], None]) -> None:
    """The core's own memory strategies."""
    from tuner_core.memory.checkpointing import GradientCheckpointing

    register(GradientCheckpointing())
