"""LyCORIS networks through the lycoris-lora package: ``--network_module lycoris.kohya --network_args algo=...``.

Creation goes through ``lycoris.kohya.create_network`` with the package's own arguments (``algo``,
``conv_dim``, ``conv_alpha``, ``factor``, ``dropout``, ``preset``, ``use_tucker``, ``dora_wd``, ...), on the
classes the architecture's layout targets (see :mod:`tuner_lora.lycoris_presets`). Saved files are
lycoris's own state dict (``lora_unet_...hada_w1_a``, ``.lokr_w1``, ``.diff``, ``.oft_blocks``, ...), so they
load wherever lycoris files load; :meth:`LycorisNetworkType.merge_into` merges them back through lycoris.
"""

from __future__ import annotations

import contextlib
import logging
from collections import Counter
from collections.abc import Iterator, Mapping
from typing import Any, ClassVar

import torch
from torch import nn

from tuner_core import FP8_DTYPES, ConfigError, ModelLayout, NetworkType
from tuner_lora.formats.lycoris_names import is_dotted_lycoris, kohya_lycoris
from tuner_lora.lora_network import flag
from tuner_lora.lycoris_merge import import_kohya, is_lycoris_file, merge_lycoris, module_from_weights
from tuner_lora.lycoris_presets import build_preset, isolated_presets, preset_settings

log = logging.getLogger(__name__)

#: The name prefix of files saved by lycoris's own (non-kohya) wrapper.
NATIVE_PREFIX = "lycoris_"
#: ``--network_args`` that tuner reads itself and does not hand to lycoris.
TUNER_ARGS = ("include_patterns", "exclude_patterns", "verbose", "preset")
#: The keyword arguments ``lycoris.kohya.create_network`` reads (others would be ignored silently).
LYCORIS_ARGS = frozenset(
    {
        "algo",
        "conv_dim",
        "conv_alpha",
        "dropout",
        "rank_dropout",
        "module_dropout",
        "use_tucker",
        "use_cp",
        "use_conv_cp",
        "disable_conv_cp",
        "use_scalar",
        "block_size",
        "train_norm",
        "constraint",
        "constrain",
        "rescaled",
        "dora_wd",
        "wd_on_output",
        "full_matrix",
        "bypass_mode",
        "rs_lora",
        "unbalanced_factorization",
        "decompose_both",
        "factor",
        "loraplus_lr_ratio",
        "loraplus_unet_lr_ratio",
        "loraplus_text_encoder_lr_ratio",
    }
)


class LycorisAdapter(nn.Module):
    """A LyCORIS network on one model: lycoris's modules as children, named as lycoris saves them.

    The ``LycorisNetworkKohya`` object that made them stays outside the module tree; its methods give the
    optimizer groups (LoRA+ included) and the max-norm regularisation.
    """

    def __init__(self, network: nn.Module, modules: list[nn.Module]) -> None:
        super().__init__()
        self._network = [network]
        for module in modules:
            self.add_module(module.lora_name, module)

    @property
    def lycoris_network(self) -> nn.Module:
        """lycoris's own network object (``LycorisNetworkKohya``)."""
        return self._network[0]

    def lycoris_modules(self) -> list[nn.Module]:
        """The lycoris modules, in model order."""
        return list(self.children())

    def apply_to(self, model: nn.Module) -> None:
        """Route each wrapped layer's forward through its lycoris module."""
        for module in self.lycoris_modules():
            module.apply_to()

    def remove(self) -> None:
        """Give each wrapped layer its own forward (and, for ``algo=full``, its weight) back."""
        for module in reversed(self.lycoris_modules()):
            module.restore()

    def parameter_groups(self, learning_rate: float) -> list[dict[str, Any]]:
        """lycoris's groups: one, or two with ``loraplus_lr_ratio`` (``lora_up`` at ``lr * ratio``)."""
        groups, _ = self.lycoris_network.prepare_optimizer_params(unet_lr=learning_rate)
        return [{**group, "params": list(group["params"])} for group in groups]

    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        """What lycoris saves: ``{name}.{tensor}`` as each module's ``state_dict`` gives it."""
        return {k: v.detach() for k, v in self.state_dict().items()}

    def load_adapter_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Load a lycoris state dict (``--network_weights``, resume); every module must be in it."""
        state = _dylora_blocks(self, dict(state))
        missing, unexpected = self.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ConfigError(
                "network weights do not fit this LyCORIS network (same algo and network_args?): "
                + (f"missing {missing[:3]}{'...' if len(missing) > 3 else ''} " if missing else "")
                + (f"unexpected {unexpected[:3]}{'...' if len(unexpected) > 3 else ''}" if unexpected else "")
            )

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        """lycoris's modules need nothing under gradient checkpointing."""

    def apply_max_norm_regularization(
        self, max_norm: float, device: torch.device
    ) -> tuple[int, float, float]:
        """lycoris's ``apply_max_norm_regularization``: ``(modules scaled, mean norm, max norm)``."""
        scaled, mean_norm, max_norm_after = self.lycoris_network.apply_max_norm_regularization(
            max_norm, device
        )
        return int(scaled), float(mean_norm), float(max_norm_after)


def _dylora_blocks(adapter: LycorisAdapter, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """DyLoRA saves whole ``lora_up`` / ``lora_down`` matrices but trains them as blocks of ``block_size``
    ranks (``up_list.N`` / ``down_list.N``): split the saved matrices into those blocks."""
    from lycoris.modules.dylora import DyLoraModule

    for module in adapter.lycoris_modules():
        name = module.lora_name
        if not isinstance(module, DyLoraModule) or f"{name}.lora_up.weight" not in state:
            continue
        up = state.pop(f"{name}.lora_up.weight")
        down = state.pop(f"{name}.lora_down.weight").reshape(module.lora_dim, -1)
        for index, block in enumerate(up.split(module.block_size, dim=1)):
            state[f"{name}.up_list.{index}"] = block
        for index, block in enumerate(down.split(module.block_size, dim=0)):
            state[f"{name}.down_list.{index}"] = block
    return state


@contextlib.contextmanager
def _lycoris_log_level(level: int) -> Iterator[None]:
    """lycoris logs each creation step to stdout: within the block only records of ``level`` and above."""
    logger = logging.getLogger("LyCORIS")
    before = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(before)


def lycoris_kwargs(args: Mapping[str, Any], dropout: float | None) -> dict[str, Any]:
    """The keyword arguments for ``create_network``: ``args`` less tuner's own, ``--network_dropout`` as
    lycoris's ``dropout`` unless given; an unknown ``algo`` is an error, an argument lycoris ignores a warning."""
    from lycoris.wrapper import network_module_dict

    kwargs = {k: v for k, v in args.items() if k not in TUNER_ARGS}
    algo = str(kwargs.get("algo", "lora")).lower()
    if algo not in network_module_dict:
        raise ConfigError(
            f"--network_args algo={algo!r} is not a LyCORIS algorithm; choose one of "
            + ", ".join(sorted(network_module_dict))
        )
    kwargs["algo"] = algo
    if dropout is not None and "dropout" not in kwargs:
        kwargs["dropout"] = dropout
    ignored = sorted(set(kwargs) - LYCORIS_ARGS)
    if ignored:
        log.warning(
            "--network_args %s: not read by lycoris.kohya.create_network (ignored)", ", ".join(ignored)
        )
    return kwargs


def _holds_fp8(model: nn.Module) -> bool:
    """Whether ``model`` stores weights in float8 (``--fp8_base``)."""
    return any(p.dtype in FP8_DTYPES for p in model.parameters())


def _bypass_on_fp8(kwargs: dict[str, Any]) -> None:
    """On fp8 base weights lycoris must add its update to the layer's output (``bypass_mode``): its default
    rebuilds each weight as base + update, which it cannot compute in float8."""
    if kwargs["algo"] == "full":
        raise ConfigError(
            "--network_args algo=full trains whole weights, which --fp8_base stores in fp8: leave --fp8_base "
            "out, or choose another algorithm"
        )
    given = kwargs.get("bypass_mode")
    if given is not None and str(given).lower() in ("false", "0", "no"):
        raise ConfigError(
            "--network_args bypass_mode=False cannot train on an fp8 base (--fp8_base): lycoris would rebuild "
            "each fp8 weight; leave bypass_mode out (tuner turns it on) or leave --fp8_base out"
        )
    if given is None:
        log.info("LyCORIS on fp8 base weights: bypass_mode=True (the update is added to each layer's output)")
    kwargs["bypass_mode"] = True


def _log_modules(algo: str, modules: list[nn.Module], verbose: bool) -> None:
    """One line per network; with ``verbose=True`` every target module too."""
    kinds = Counter(type(m).__name__ for m in modules)
    log.info(
        "LyCORIS %s: %d modules (%s)", algo, len(modules), ", ".join(f"{k}: {n}" for k, n in kinds.items())
    )
    if verbose:
        for module in modules:
            log.info("  %-60s %s", module.lora_name, type(module).__name__)


class LycorisNetworkType(NetworkType):
    """LyCORIS (LoCon, LoHa, LoKr, full, DyLoRA, GLoRA, diag-OFT, BOFT, IA³) through lycoris-lora."""

    name: ClassVar[str] = "lycoris"
    aliases: ClassVar[tuple[str, ...]] = ("lycoris.kohya",)
    #: The algorithm this type trains (``None``: ``--network_args algo=...``, LoRA / LoCon by default).
    algo: ClassVar[str | None] = None

    def _args(self, args: Mapping[str, Any]) -> Mapping[str, Any]:
        """``args`` with this type's algorithm; another ``algo=`` given with it is an error."""
        if self.algo is None:
            return args
        given = str(args.get("algo", self.algo)).lower()
        if given != self.algo:
            raise ConfigError(
                f"--network_module {self.name} trains {self.algo}, but --network_args says algo={given}: "
                f"leave algo out, or use --network_module lycoris.kohya with algo={given}"
            )
        return {**args, "algo": self.algo}

    def create(
        self,
        model: nn.Module,
        layout: ModelLayout,
        *,
        dim: int,
        alpha: float,
        dropout: float | None,
        args: Mapping[str, Any],
        multiplier: float = 1.0,
    ) -> LycorisAdapter:
        """``lycoris.kohya.create_network(multiplier, dim, alpha, ...)`` on ``model`` with its own preset state."""
        kohya = import_kohya()
        args = self._args(args)
        kwargs = lycoris_kwargs(args, dropout)
        if _holds_fp8(model):
            _bypass_on_fp8(kwargs)
        verbose = flag(args, "verbose")
        with (
            isolated_presets(kohya, layout.network_prefix) as key,
            _lycoris_log_level(logging.INFO if verbose else logging.WARNING),
        ):
            kohya.PRESET[key] = build_preset(kohya, model, layout, args)
            network = kohya.create_network(multiplier, dim, alpha, None, None, model, preset=key, **kwargs)
            for attribute, value in preset_settings(network).items():
                setattr(
                    network, attribute, value
                )  # the instance keeps its settings, the class gets its own back
        modules = list(network.unet_loras)
        if not modules:
            targets = (
                f"preset {args['preset']}" if args.get("preset") else "the architecture's network targets"
            )
            raise ConfigError(
                f"LyCORIS {kwargs['algo']} found no layer to wrap: {targets} matched nothing "
                "(check --network_args preset, include_patterns, exclude_patterns)"
            )
        _log_modules(kwargs["algo"], modules, verbose)
        return LycorisAdapter(network, modules)

    def create_from_weights(
        self,
        model: nn.Module,
        layout: ModelLayout,
        weights: Mapping[str, torch.Tensor],
        *,
        alpha: float,
        dropout: float | None,
        args: Mapping[str, Any],
        multiplier: float = 1.0,
    ) -> LycorisAdapter:
        """``--dim_from_weights``: each module the file holds, with its own algorithm and shape (as
        ``create_network_from_weights`` builds them), on the model's layer of that name."""
        kohya = import_kohya()
        layers = {
            f"{layout.network_prefix}_{path.replace('.', '_')}": layer
            for path, layer in model.named_modules()
            if path
        }
        modules = []
        for name in dict.fromkeys(key.split(".", 1)[0] for key in weights):
            if name in layers:
                module, _ = module_from_weights(weights, name, layers[name])
                if module is not None:
                    module.multiplier = multiplier
                    modules.append(module)
        if not modules:
            raise ConfigError(
                "--dim_from_weights: no module of --network_weights matches a layer of this model"
            )
        with isolated_presets(kohya, layout.network_prefix), _lycoris_log_level(logging.ERROR):
            network = kohya.LycorisNetworkKohya(None, nn.Module())  # an empty shell for its methods
        network.unet_loras = modules
        network.loras = modules
        _log_modules("from weights", modules, flag(args, "verbose"))
        return LycorisAdapter(network, modules)

    def check_args(self, args: Mapping[str, Any]) -> list[str]:
        """An unknown ``algo`` before the model loads (lycoris itself is imported for the list)."""
        try:
            lycoris_kwargs(self._args(args), None)
        except ConfigError as exc:
            return [str(exc)]
        return []

    def can_load(self, keys: set[str]) -> bool:
        """LyCORIS files (``hada_w1_a``, ``lokr_w1``, ``diff``, ``oft_blocks``, ...; plain LoRA too)."""
        return is_lycoris_file(keys)

    def normalize_weights(
        self,
        layout: ModelLayout,
        weights: Mapping[str, torch.Tensor | None],
        metadata: Mapping[str, str] | None = None,
    ) -> dict[str, torch.Tensor | None]:
        """Files of lycoris's own wrapper (``create_lycoris``: names start ``lycoris_``) under the layout's
        prefix (``lora_unet_``), as its kohya wrapper saves them, and LoHa / LoKr files in the dotted spelling
        of ComfyUI / PEFT (:mod:`tuner_lora.formats.lycoris_names`); other names unchanged."""
        prefix = f"{layout.network_prefix}_"
        renamed = {
            (prefix + key[len(NATIVE_PREFIX) :] if key.startswith(NATIVE_PREFIX) else key): value
            for key, value in weights.items()
        }
        if is_dotted_lycoris(renamed):
            return kohya_lycoris(renamed, layout.network_prefix, metadata)
        return renamed

    def merge_into(
        self,
        model: nn.Module,
        layout: ModelLayout,
        weights: Mapping[str, torch.Tensor],
        multiplier: float,
    ) -> list[str]:
        """Merge through lycoris's modules (see :mod:`tuner_lora.lycoris_merge`); return the unused names."""
        return merge_lycoris(model, layout, weights, multiplier)

    def metadata(self, dim: int, alpha: float, args: Mapping[str, Any]) -> dict[str, str]:
        """``ss_network_*`` keys as the reference writes them for ``lycoris.kohya``."""
        return {
            "ss_network_module": "lycoris.kohya",
            "ss_network_dim": str(dim),
            "ss_network_alpha": str(alpha),
        }


class LohaNetworkType(LycorisNetworkType):
    """LoHa (``--network_module networks.loha``, as in musubi-tuner): LyCORIS LoHa on the same targets. Its
    files (``hada_w1_a`` ... and ``alpha`` per layer) are those musubi-tuner's LoHa writes and reads."""

    name: ClassVar[str] = "loha"
    aliases: ClassVar[tuple[str, ...]] = ("networks.loha",)
    algo: ClassVar[str | None] = "loha"

    def can_load(self, keys: set[str]) -> bool:
        """LoHa files only (``hada_*`` tensors); other LyCORIS files are the lycoris type's."""
        return any(".hada_" in key for key in keys) and super().can_load(keys)


class LokrNetworkType(LycorisNetworkType):
    """LoKr (``--network_module networks.lokr``, as in musubi-tuner): LyCORIS LoKr on the same targets, with
    ``--network_args factor=...``; its files hold ``lokr_w1`` / ``lokr_w2`` (or their ``_a`` / ``_b``)."""

    name: ClassVar[str] = "lokr"
    aliases: ClassVar[tuple[str, ...]] = ("networks.lokr",)
    algo: ClassVar[str | None] = "lokr"

    def can_load(self, keys: set[str]) -> bool:
        """LoKr files only (``lokr_*`` tensors); other LyCORIS files are the lycoris type's."""
        return any(".lokr_" in key for key in keys) and super().can_load(keys)
