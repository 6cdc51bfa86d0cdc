"""The hooks a tuner plugin may implement; the long form (and why three kinds) is in docs/architecture.md.

Registries (``tuner_register_*``) get a ``register`` callback. Per-call hooks (``@_per_call``) return the
first answer that is not ``None``; the architecture's method in :data:`ARCHITECTURE_METHODS` answers last.
Lifecycle hooks (``tuner_on_*``) are broadcast. Implement one with a function of the hook's name decorated
with :data:`tuner_core.hookimpl`; it may accept any subset of the arguments.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pluggy

if TYPE_CHECKING:
    import torch

    from tuner_core.architecture import Architecture
    from tuner_core.cache.record import CacheRecord
    from tuner_core.config.cache_options import CacheLatentsOptions, CacheTextOptions
    from tuner_core.config.generate_options import GenerateOptions
    from tuner_core.config.train_options import TrainOptions
    from tuner_core.data.items import MediaSample
    from tuner_core.memory.strategy import MemoryStrategy
    from tuner_core.network import NetworkType
    from tuner_core.sampling.request import SampleRequest
    from tuner_core.training.run import TrainingRun
    from tuner_core.training.timesteps import NoisyInput
    from tuner_core.weights.stream import Transform

PROJECT = "tuner"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

#: The :class:`~tuner_core.architecture.Architecture` method that answers each per-call hook last; it
#: takes the hook's arguments without ``architecture``.
ARCHITECTURE_METHODS: dict[str, str] = {}
_Spec = TypeVar("_Spec", bound=Callable[..., Any])


def _per_call(method: str) -> Callable[[_Spec], _Spec]:
    """Mark a per-call spec (``firstresult``) and name the architecture method that answers it last."""

    def mark(spec: _Spec) -> _Spec:
        ARCHITECTURE_METHODS[spec.__name__] = method
        return hookspec(firstresult=True)(spec)

    return mark


@hookspec
def tuner_register_architectures(register: Callable[[Architecture], None]) -> None:
    """Register architectures (``--arch NAME``): ``register(instance)``; each name and alias unique."""


@hookspec
def tuner_register_networks(register: Callable[[NetworkType], None]) -> None:
    """Register network types (``--network_module``): ``register(instance)``; names and aliases unique."""


@hookspec
def tuner_register_memory_strategies(register: Callable[[MemoryStrategy], None]) -> None:
    """Register memory strategies (fp8, block swap, checkpointing, ...): ``register(instance)``."""


@_per_call("load_component")
def tuner_load_model(
    architecture: Architecture,
    component: str,
    options: CacheLatentsOptions | CacheTextOptions | TrainOptions | GenerateOptions,
    device: torch.device,
    transform: Transform | None,
) -> Any | None:
    """Load ``component`` (``"dit"``, ...) onto ``device``; hand ``transform`` (or ``None``) to the loader."""


@_per_call("encode_latents")
def tuner_encode_latents(
    architecture: Architecture,
    samples: Sequence[MediaSample],
    models: Mapping[str, Any],
    options: CacheLatentsOptions,
) -> list[list[CacheRecord]] | None:
    """Encode bucket-resized ``samples`` with ``models`` (``tuner cache-latents``): records per sample."""


@_per_call("encode_text")
def tuner_encode_text(
    architecture: Architecture, captions: Sequence[str], models: Mapping[str, Any], options: CacheTextOptions
) -> list[dict[str, torch.Tensor]] | None:
    """Encode one batch of ``captions`` (``tuner cache-text``): one ``{key: tensor}`` per caption."""


@_per_call("batch_item")
def tuner_batch_item(
    architecture: Architecture,
    latent_tensors: Mapping[str, torch.Tensor],
    text_tensors: Mapping[str, torch.Tensor],
) -> dict[str, torch.Tensor] | None:
    """One batch element (clean latents under ``"latents"``) from a latent cache and its text cache."""


@_per_call("predict")
def tuner_predict(
    architecture: Architecture,
    model: torch.nn.Module,
    batch: Mapping[str, torch.Tensor],
    noisy_latents: torch.Tensor,
    timesteps: torch.Tensor,
    options: TrainOptions,
) -> torch.Tensor | None:
    """A training step's forward: the prediction of ``model`` from ``noisy_latents`` at ``timesteps``."""


@_per_call("noisy_input")
def tuner_noisy_input(
    architecture: Architecture, batch: Mapping[str, torch.Tensor], noisy: NoisyInput
) -> NoisyInput | None:
    """The model input of a training step from the core's draw ``noisy`` (default: ``noisy`` as is)."""


@_per_call("training_target")
def tuner_training_target(
    architecture: Architecture, batch: Mapping[str, torch.Tensor], latents: torch.Tensor, noise: torch.Tensor
) -> torch.Tensor | None:
    """What a step's prediction is compared with, from clean ``latents`` and ``noise``."""


@_per_call("compute_loss")
def tuner_compute_loss(
    architecture: Architecture,
    prediction: torch.Tensor,
    target: torch.Tensor,
    sigmas: torch.Tensor,
    batch: Mapping[str, torch.Tensor],
    options: TrainOptions,
) -> torch.Tensor | None:
    """Reduce a step's ``prediction`` and ``target`` (noise levels ``sigmas``, ``(B,)``) to a scalar loss."""


@_per_call("sample")
def tuner_sample(
    architecture: Architecture,
    models: Mapping[str, Any],
    requests: Sequence[SampleRequest],
    options: TrainOptions | GenerateOptions,
    generators: Sequence[torch.Generator],
) -> Iterable[torch.Tensor] | None:
    """The latents of one video per request, in order (lazily: the caller writes each before the next)."""


@_per_call("decode_latents")
def tuner_decode_latents(
    architecture: Architecture,
    models: Mapping[str, Any],
    latents: torch.Tensor,
    options: TrainOptions | GenerateOptions,
    sink: Callable[[torch.Tensor], None],
) -> None:
    """Decode ``latents`` (as ``tuner_sample`` made them) into ``sink``: ``(C, F, H, W)`` pixel runs in
    [0, 1], in time order."""


@hookspec
def tuner_on_train_start(run: TrainingRun) -> None:
    """On every process once models, data and optimizer are ready, before the first step."""


@hookspec
def tuner_on_step_end(run: TrainingRun, step: int, metrics: Mapping[str, float]) -> None:
    """On every process after each optimizer ``step`` (global, 1-based) with its logged ``metrics``."""


@hookspec
def tuner_on_save(run: TrainingRun, path: Path, kind: str) -> None:
    """On the writing process after saving ``path`` atomically; ``kind``: ``"weights"`` or ``"state"``."""


@hookspec
def tuner_on_sample(run: TrainingRun, paths: Sequence[Path], step: int) -> None:
    """On the writing process after sample videos were written to ``paths`` at global ``step``."""
