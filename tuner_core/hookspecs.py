"""The hooks a tuner plugin may implement.

Three kinds (the reasoning is in docs/architecture.md):

* **Registries** (``tuner_register_*``) hand the plugin a ``register`` callback. Each registered object
  has a unique ``name``; two plugins registering the same name is an error naming both.
* **Per-call hooks** (``firstresult``) answer one question for one call: load this component, encode
  these items, batch this cache, predict, compute this loss, sample this video. Every such call the
  engine makes goes through its hook. A plugin returns ``None`` to pass; the core's own implementation
  runs last and calls the architecture's method of the same meaning (:data:`ARCHITECTURE_METHODS`).
* **Lifecycle hooks** are broadcast to every plugin; their return values are ignored.

A plugin implements a hook by defining a function with the hook's name, decorated with
:data:`tuner_core.hookimpl`. Implementations may accept any subset of the arguments.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    import torch

    from tuner_core.architecture import Architecture
    from tuner_core.cache.record import CacheRecord
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

# --------------------------------------------------------------------------------------------------
# Registries
# --------------------------------------------------------------------------------------------------


@hookspec
def tuner_register_architectures(register: Callable[[Architecture], None]) -> None:
    """Register model architectures (selected on the command line with ``--arch NAME``).

    :param register: call it once per :class:`~tuner_core.architecture.Architecture` instance.
        The instance's ``name`` must be unique across all loaded plugins.
    """


@hookspec
def tuner_register_networks(register: Callable[[NetworkType], None]) -> None:
    """Register network types that train or merge adapters (``--network_module``, ``--lora_weight``).

    :param register: call it once per :class:`~tuner_core.network.NetworkType` instance. Its ``name`` and
        every entry of its ``aliases`` must be unique across all loaded plugins.
    """


@hookspec
def tuner_register_memory_strategies(register: Callable[[MemoryStrategy], None]) -> None:
    """Register memory strategies (fp8, fp8-scaled, block swap, gradient checkpointing, ...).

    A strategy is applied generically to any model through the
    :class:`~tuner_core.architecture.ModelLayout` its architecture declares.

    :param register: call it once per :class:`~tuner_core.memory.strategy.MemoryStrategy` instance.
    """


# --------------------------------------------------------------------------------------------------
# Per-call hooks: the first non-None answer wins; the architecture answers last
# --------------------------------------------------------------------------------------------------


@hookspec(firstresult=True)
def tuner_load_model(
    architecture: Architecture,
    component: str,
    options: Any,
    device: torch.device,
    transform: Transform | None,
) -> Any | None:
    """Load one model component (``"dit"``, ``"vae"``, ``"text_encoder1"``, ...) of an architecture.

    Return the loaded object, or ``None`` to let the next plugin (finally the architecture's own
    :meth:`~tuner_core.architecture.Architecture.load_component`) answer. A plugin may take over a
    file format the architecture does not know, for example.

    :param architecture: the architecture selected with ``--arch``.
    :param component: one of ``architecture.components(command, options)``.
    :param options: the command's validated options (core fields and the architecture's own).
    :param device: where the component will run.
    :param transform: the memory strategies' rewrite of each tensor while the weights stream in (fp8
        quantisation, for one); pass it to the loader (``tuner_core.weights.load_into_model``). ``None``
        when no strategy rewrites tensors.
    """


@hookspec(firstresult=True)
def tuner_encode_latents(
    architecture: Architecture, samples: Sequence[MediaSample], models: Mapping[str, Any], options: Any
) -> list[list[CacheRecord]] | None:
    """Encode decoded media into latent cache records (``tuner cache-latents``).

    :param samples: one bucket-resized clip or image per entry, with its dataset item.
    :param models: the components the architecture asked for, by name.
    :param options: the command's validated options.
    :return: for each sample, the cache records (files) it produces, or ``None`` to pass.
    """


@hookspec(firstresult=True)
def tuner_encode_text(
    architecture: Architecture, captions: Sequence[str], models: Mapping[str, Any], options: Any
) -> list[dict[str, torch.Tensor]] | None:
    """Encode captions into text-condition tensors (``tuner cache-text``).

    :param captions: the captions of one batch.
    :param models: the components the architecture asked for, by name.
    :param options: the command's validated options.
    :return: one ``{key: tensor}`` mapping per caption, or ``None`` to pass.
    """


@hookspec(firstresult=True)
def tuner_batch_item(
    architecture: Architecture,
    latent_tensors: Mapping[str, torch.Tensor],
    text_tensors: Mapping[str, torch.Tensor],
) -> dict[str, torch.Tensor] | None:
    """Turn one latent cache and its text cache into the named tensors of one batch element.

    Runs in the data-loader worker processes (the plugin manager is rebuilt there).

    :param latent_tensors: the tensors of one latent cache file, by their stored names.
    :param text_tensors: the tensors of the text cache that belongs to it.
    :return: ``{name: tensor}`` with the clean latents under ``"latents"``, or ``None`` to pass.
    """


@hookspec(firstresult=True)
def tuner_predict(
    architecture: Architecture,
    model: torch.nn.Module,
    batch: Mapping[str, torch.Tensor],
    noisy_latents: torch.Tensor,
    timesteps: torch.Tensor,
    options: Any,
) -> torch.Tensor | None:
    """Run the denoiser on one training batch (the forward of every training step).

    :param model: the trained component, with its network applied.
    :param noisy_latents: the noised clean latents of the batch.
    :param timesteps: the noise level of each element on the 0-1000 scale, shape ``(B,)``.
    :return: the prediction, shaped like the training target, or ``None`` to pass.
    """


@hookspec(firstresult=True)
def tuner_noisy_input(
    architecture: Architecture, batch: Mapping[str, torch.Tensor], noisy: NoisyInput
) -> NoisyInput | None:
    """The model input of one training step, from the core's draw of noise and noise levels.

    :param batch: the batch, so an architecture can keep a clean conditioning frame unnoised or give each
        frame its own timestep.
    :param noisy: the core's draw: ``sigmas``, ``timesteps``, ``noise`` and ``noisy_latents`` (the mix).
    :return: the input to predict from (``noisy`` unchanged by default), or ``None`` to pass.
    """


@hookspec(firstresult=True)
def tuner_training_target(
    architecture: Architecture,
    batch: Mapping[str, torch.Tensor],
    latents: torch.Tensor,
    noise: torch.Tensor,
) -> torch.Tensor | None:
    """What the prediction of a training step is compared with (flow matching: ``noise - latents``).

    :param batch: the batch, so an architecture can keep a clean conditioning frame out of the target.
    :param latents: the clean latents; ``noise``: the noise they were mixed with.
    """


@hookspec(firstresult=True)
def tuner_compute_loss(
    architecture: Architecture,
    prediction: torch.Tensor,
    target: torch.Tensor,
    sigmas: torch.Tensor,
    batch: Mapping[str, torch.Tensor],
    options: Any,
) -> torch.Tensor | None:
    """Reduce one training step's prediction and target to a scalar loss.

    The default (:meth:`~tuner_core.architecture.Architecture.compute_loss`) is the mean squared error
    weighted by ``--weighting_scheme``.

    :param prediction: the model output, shaped like ``target``.
    :param target: what the model should predict (for flow matching: noise minus clean latents).
    :param sigmas: the noise level of each batch element, shape ``(B,)``.
    :param batch: the batch the prediction was made from.
    :param options: the training options.
    """


@hookspec(firstresult=True)
def tuner_sample(
    architecture: Architecture,
    models: Mapping[str, Any],
    request: SampleRequest,
    options: Any,
    generator: torch.Generator,
) -> torch.Tensor | None:
    """Generate one video for a sample request (during training or ``tuner generate``).

    :param request: prompt, size, frames, steps, guidance and seed of the sample.
    :param models: the command's :class:`~tuner_core.components.Components`: reading one loads it, and
        ``models.release(name)`` frees one that is done (a text encoder before the denoiser runs).
    :param options: the command's validated options.
    :param generator: the random generator to draw noise from.
    :return: pixels in ``[0, 1]`` shaped ``(C, F, H, W)``, or ``None`` to pass.
    """


#: The :class:`~tuner_core.architecture.Architecture` method that answers each per-call hook last; it
#: takes the hook's arguments without ``architecture``.
ARCHITECTURE_METHODS = {
    "tuner_load_model": "load_component",
    "tuner_encode_latents": "encode_latents",
    "tuner_encode_text": "encode_text",
    "tuner_batch_item": "batch_item",
    "tuner_noisy_input": "noisy_input",
    "tuner_predict": "predict",
    "tuner_training_target": "training_target",
    "tuner_compute_loss": "compute_loss",
    "tuner_sample": "sample",
}


# --------------------------------------------------------------------------------------------------
# Lifecycle hooks: every implementation is called
# --------------------------------------------------------------------------------------------------


@hookspec
def tuner_on_train_start(run: TrainingRun) -> None:
    """Called once on every process after models, data and optimizer are ready, before the first step.

    :param run: the run's options, architecture, output directory and counters.
    """


@hookspec
def tuner_on_step_end(run: TrainingRun, step: int, metrics: Mapping[str, float]) -> None:
    """Called on every process after each optimizer step.

    :param step: the global step just completed (1-based).
    :param metrics: loss, learning rate and other logged values of that step.
    """


@hookspec
def tuner_on_save(run: TrainingRun, path: Path, kind: str) -> None:
    """Called on the writing process after a file or directory is saved atomically.

    :param path: what was written.
    :param kind: ``"weights"`` (a network or model file) or ``"state"`` (a resumable state directory).
    """


@hookspec
def tuner_on_sample(run: TrainingRun, paths: Sequence[Path], step: int) -> None:
    """Called on the writing process after sample videos were generated during training.

    :param paths: the written sample files.
    :param step: the global step the samples were taken at.
    """
