"""What an architecture plugin tells the core: its options, media rules, model layout and model calls.

An architecture is an object registered through
:func:`~tuner_core.hookspecs.tuner_register_architectures`. The core never imports an architecture; it
only calls the methods below. Subclass :class:`Architecture` and fill in the class attributes and the
methods a command needs; a method left out raises :class:`~tuner_core.errors.NotSupportedError`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import attrs

from tuner_core.cache.naming import CacheNaming
from tuner_core.errors import NotSupportedError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from tuner_core.cache.record import CacheRecord
    from tuner_core.config.train_options import TrainOptions
    from tuner_core.data.items import MediaItem, MediaSample
    from tuner_core.sampling.request import SampleRequest
    from tuner_core.training.timesteps import NoisyInput
    from tuner_core.weights.stream import Transform

#: The commands an architecture may support, as typed on the command line.
COMMANDS = ("cache-latents", "cache-text", "train", "generate")


@attrs.frozen
class MediaRules:
    """How the core turns source media into training clips for this architecture."""

    #: Frame rate clips are resampled to when a dataset gives ``source_fps``.
    fps: float = 30.0
    #: Frame counts are rounded down to ``frame_multiple * n + 1`` (4n+1 for a causal VAE with stride 4).
    frame_multiple: int = 1
    #: Bucket widths and heights are multiples of this many pixels.
    bucket_step: int = 16
    #: Clips shorter than this many frames cannot be cached (reported and skipped).
    min_frames: int = 1
    #: Whether image datasets (``image_directory``) can be trained on.
    supports_images: bool = True
    #: Whether video datasets (``video_directory``) can be trained on.
    supports_videos: bool = True


@attrs.frozen
class ModelLayout:
    """Declarations that let core strategies and networks handle a model without knowing it.

    Module paths are dotted attribute paths from the model root, as in ``model.named_modules()``.
    """

    #: Paths of the ``nn.ModuleList`` attributes holding the repeated transformer blocks, in call order.
    #: Block swap, gradient checkpointing and compilation act per block of these lists.
    block_lists: tuple[str, ...] = ()
    #: Class names of the modules inside which networks (LoRA, LyCORIS) wrap Linear/Conv layers.
    network_targets: tuple[str, ...] = ()
    #: Regular expressions (full match on the module path) of layers a network never wraps.
    network_exclude: tuple[str, ...] = ()
    #: Regular expressions (searched in the parameter name) of weights that stay in high precision:
    #: never cast to fp8 or quantised, whatever memory strategy is active.
    keep_high_precision: tuple[str, ...] = ()
    #: Regular expressions (searched in the parameter name) of the weights ``--fp8_base`` / ``--fp8_scaled``
    #: store in fp8; empty: every 2-D ``.weight`` inside the ``block_lists`` modules (the reference's rule).
    #: ``keep_high_precision`` wins over both. Only Linear layers' weights can be quantised.
    quantise_weights: tuple[str, ...] = ()
    #: Prefix of saved network weight names (``lora_unet_<module_path_with_underscores>``).
    network_prefix: str = "lora_unet"
    #: Most blocks ``--blocks_to_swap`` may move in training and in inference (``None``: no limit declared).
    max_blocks_to_swap_training: int | None = None
    max_blocks_to_swap_inference: int | None = None


class Architecture:
    """Base class of an architecture plugin. Class attributes describe it; methods do its work."""

    #: The value of ``--arch`` that selects this architecture.
    name: ClassVar[str]
    #: Other values of ``--arch`` accepted for it.
    aliases: ClassVar[tuple[str, ...]] = ()
    #: One line for ``tuner plugins``.
    title: ClassVar[str] = ""
    #: The architecture's own options per command: an attrs class built with
    #: :func:`tuner_core.options.option` fields. Missing commands have no extra options.
    options: ClassVar[Mapping[str, type]] = {}
    #: Extra keys this architecture accepts in dataset TOML tables (an attrs class), or ``None``.
    dataset_options: ClassVar[type | None] = None
    #: Defaults this architecture gives to core options, per command (``{"train": {"learning_rate": 1e-4}}``).
    option_defaults: ClassVar[Mapping[str, Mapping[str, Any]]] = {}
    #: How media become clips.
    media: ClassVar[MediaRules] = MediaRules()
    #: The layout of the trained model (the denoiser).
    layout: ClassVar[ModelLayout] = ModelLayout()
    #: Bumped whenever cache contents change meaning; part of every cache fingerprint.
    cache_version: ClassVar[str] = "1"
    #: What cache file names end in (``fp``: ``clip_00000-037_0640x0480_fp.safetensors``); default: ``name``.
    cache_short_name: ClassVar[str | None] = None
    #: The component ``tuner train`` trains (loaded with :meth:`load_component`).
    trained_component: ClassVar[str] = "dit"
    #: The commands this architecture supports (of :data:`COMMANDS`); others are refused up front.
    commands: ClassVar[tuple[str, ...]] = COMMANDS
    #: Whether :meth:`sample` is implemented: ``tuner generate`` and samples during training need it.
    can_sample: ClassVar[bool] = False

    def _not_supported(self, method: str) -> NotSupportedError:
        return NotSupportedError(
            f"--arch {self.name} cannot do this: its plugin does not implement {type(self).__name__}.{method}()"
        )

    # -- models ------------------------------------------------------------------------------------

    def components(self, command: str, options: Any) -> tuple[str, ...]:
        """Names of the model components ``command`` needs (``"vae"``, ``"dit"``, ...), in load order."""
        raise self._not_supported("components")

    def load_component(
        self, component: str, options: Any, device: torch.device, transform: Transform | None = None
    ) -> Any:
        """Load one component named by :meth:`components` onto ``device``.

        :param transform: rewrite each tensor with it while the weights stream in (memory strategies).
        """
        raise self._not_supported("load_component")

    def skeleton(self) -> nn.Module:
        """The released denoiser built on the meta device (no weights, no memory), for tools that only need
        its layer names (``tuner convert-lora``). Architectures whose model needs a checkpoint to be built
        leave it out; those tools then ask for the checkpoint."""
        raise self._not_supported("skeleton")

    def component_path(self, component: str, options: Any) -> Path | None:
        """The file ``component`` loads from: by default the option of the same name (``--dit``, ``--vae``),
        or ``None`` when the command's options have no such option or it was not given."""
        if not attrs.has(type(options)) or component not in attrs.fields_dict(type(options)):
            return None
        return getattr(options, component)

    def cache_identity(self, command: str, options: Any) -> str:
        """A string that changes whenever ``command`` would write different caches for the same media.

        It enters every cache fingerprint: include the encoder weights (path, size, mtime) and every option
        that changes cache contents (window size, layout, ...).
        """
        return ""

    def check_options(self, command: str, options: Any) -> list[str]:
        """Problems with ``command``'s options that this architecture can see before loading any model.

        Called once in pre-flight, with the core's checks; return one sentence per problem, naming the
        option and what to do (an empty list when all is well). Never load a model here.
        """
        return []

    # -- caching -----------------------------------------------------------------------------------

    @property
    def cache_naming(self) -> CacheNaming:
        """The cache file names: the reference tool's grammar ending in ``_{cache_short_name}`` (or the
        architecture's name)."""
        return CacheNaming(self.cache_short_name or self.name)

    def latent_cache_parts(self, item: MediaItem, options: Any) -> int | None:
        """How many cache files a clip of ``item`` is split into (``None``: one, named without a part)."""
        return None

    def latent_cache_names(self, item: MediaItem, options: Any) -> list[str]:
        """File names (in the item's cache directory) caching ``item`` writes, in order (default: the
        reference's grammar, one per part)."""
        parts = self.latent_cache_parts(item, options) if item.is_video else None
        if parts is None:
            return [self.cache_naming.latent_name(item)]
        return [self.cache_naming.latent_name(item, part) for part in range(parts)]

    def is_latent_cache(self, file_name: str) -> bool:
        """Whether a file in a cache directory is a latent cache of this architecture (cleanup, training)."""
        return self.cache_naming.is_latent(file_name)

    def encode_latents(
        self, samples: Sequence[MediaSample], models: Mapping[str, Any], options: Any
    ) -> list[list[CacheRecord]]:
        """Encode decoded, bucket-resized media: for each sample, the records named by :meth:`latent_cache_names`."""
        raise self._not_supported("encode_latents")

    def text_cache_name(self, item: MediaItem) -> str:
        """File name of the text-condition cache of ``item`` (shared by all clips of its source)."""
        return self.cache_naming.text_name(item.stem)

    def is_text_cache(self, file_name: str) -> bool:
        """Whether a file in a cache directory is a text cache of this architecture."""
        return self.cache_naming.is_text(file_name)

    def text_cache_for(self, latent_cache_name: str) -> str:
        """File name of the text cache that belongs to a latent cache file."""
        return self.cache_naming.text_for(latent_cache_name)

    def encode_text(
        self, captions: Sequence[str], models: Mapping[str, Any], options: Any
    ) -> list[dict[str, torch.Tensor]]:
        """Encode a batch of captions; one tensor mapping per caption."""
        raise self._not_supported("encode_text")

    def text_cache_metadata(self, caption: str) -> dict[str, str]:
        """Metadata written with a text cache file."""
        return {}

    # -- training ----------------------------------------------------------------------------------

    def batch_item(
        self, latent_tensors: Mapping[str, torch.Tensor], text_tensors: Mapping[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """Turn one latent cache and its text cache into the named tensors of one batch element.

        The core stacks elements with equal shapes into batches. The clean latents must be under ``"latents"``.
        """
        raise self._not_supported("batch_item")

    def validate_cache(
        self,
        path: Path,
        header: Mapping[str, tuple[str, tuple[int, ...]]],
        options: Any,
        dataset_options: Any,
    ) -> None:
        """Check that a latent cache fits the training options (raise ``ConfigError`` naming the file if not).

        :param header: ``{tensor name: (dtype, shape)}`` of the cache file.
        :param dataset_options: the architecture's keys of the cache's dataset table (or ``None``).
        """

    def predict(
        self,
        model: nn.Module,
        batch: Mapping[str, torch.Tensor],
        noisy_latents: torch.Tensor,
        timesteps: torch.Tensor,
        options: Any,
    ) -> torch.Tensor:
        """Run the denoiser on one batch; return its prediction (a flow velocity, shaped like the latents).

        :param timesteps: noise level of each element on the 0-1000 scale, shape ``(B,)``.
        """
        raise self._not_supported("predict")

    def noisy_input(self, batch: Mapping[str, torch.Tensor], noisy: NoisyInput) -> NoisyInput:
        """The model input of a training step from the core's draw (unchanged by default); an architecture
        may keep conditioning frames clean or set per-frame timesteps here."""
        return noisy

    def training_target(
        self, batch: Mapping[str, torch.Tensor], latents: torch.Tensor, noise: torch.Tensor
    ) -> torch.Tensor:
        """What :meth:`predict` should output; flow matching's velocity ``noise - latents`` by default.

        :param batch: the batch (an architecture may leave conditioning frames out of the target).
        """
        return noise - latents

    def compute_loss(
        self,
        prediction: torch.Tensor,
        target: torch.Tensor,
        sigmas: torch.Tensor,
        batch: Mapping[str, torch.Tensor],
        options: TrainOptions,
    ) -> torch.Tensor:
        """The loss of one step: mean squared error weighted per element by ``--weighting_scheme``."""
        from tuner_core.training.loss import weighted_mse

        return weighted_mse(prediction, target, sigmas, options.weighting_scheme)

    def trainable_parameters(self, model: nn.Module) -> list[nn.Parameter]:
        """Parameters trained by full fine-tuning (no ``--network_module``); all of them by default."""
        return [p for p in model.parameters()]

    def network_metadata(self) -> dict[str, str]:
        """Metadata written into saved network files (for example ``ss_base_model_version``)."""
        return {}

    # -- sampling ----------------------------------------------------------------------------------

    def sample(
        self,
        models: Mapping[str, Any],
        requests: Sequence[SampleRequest],
        options: Any,
        generators: Sequence[torch.Generator],
    ) -> Iterable[torch.Tensor]:
        """Generate the latents of one video per request (``generators[i]`` seeded for ``requests[i]``).

        Yield them in order: the caller writes (and decodes) each before asking for the next. Taking every
        request at once lets an architecture run its phases once for all of them (encode all prompts,
        free the text encoders, then run the denoiser), and ``models`` (a
        :class:`~tuner_core.components.Components`) loads components when first read and frees them on
        ``models.release(name)``.
        """
        raise self._not_supported("sample")

    def decode_latents(
        self,
        models: Mapping[str, Any],
        latents: torch.Tensor,
        options: Any,
        sink: Callable[[torch.Tensor], None],
    ) -> None:
        """Decode latents that :meth:`sample` made (or a saved latent file holds) into pixels.

        Hand ``sink`` runs of ``(C, F, H, W)`` frames in [0, 1], in time order, as soon as each is final, so
        the writer encodes them without the whole video in memory.
        """
        raise self._not_supported("decode_latents")

    def generation_request(self, options: Any) -> SampleRequest:
        """The request ``tuner generate`` samples, from its validated options (override to add frames etc.)."""
        from tuner_core.sampling.request import SampleRequest

        height, width = options.video_size
        return SampleRequest(
            prompt=options.prompt or "",
            negative_prompt=options.negative_prompt,
            width=width,
            height=height,
            steps=options.infer_steps,
            cfg_scale=options.guidance_scale,
            seed=options.seed,
        )

    def check_request(self, request: SampleRequest, options: Any) -> list[str]:
        """Problems with one generation request (the command line's, a ``--from_file`` job, a sample
        prompt) that show before any model loads: a missing image, a size the model cannot make. Each is
        one line naming the option or switch and what to do."""
        return []

    def sample_components(self, options: Any) -> tuple[str, ...]:
        """Components needed to sample during training, besides the trained model (loaded only when sampling)."""
        return ()

    # -- demo --------------------------------------------------------------------------------------

    def demo(self, directory: Path, *, quick: bool = False) -> Mapping[str, Mapping[str, Any]]:
        """Create demo assets (a small dataset, weights) in ``directory`` for ``tuner demo``.

        :param quick: a smaller run through the same steps (fewer clips and steps; ``tuner demo --quick``,
            for tests).
        :return: for each command in :data:`COMMANDS`, the option values to run it with (core and own).
        """
        raise self._not_supported("demo")

    def demo_notes(self) -> list[str]:
        """Lines ``tuner demo`` prints after its summary: what the outputs show, what to run next."""
        return []
