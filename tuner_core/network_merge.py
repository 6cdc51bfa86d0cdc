"""Merging network files into the denoiser's weights while its checkpoint streams in, before fp8.

The reference merges LoRA files into each weight as it is read, so the weights are quantised (``--fp8``,
``--fp8_scaled``) with the update already in them and host memory never holds the model twice.
:class:`NetworkMerge` does the same as a loader transform (see :mod:`tuner_core.weights.stream`), chained
before the memory strategies' rewrite. For each streamed ``<layer>.weight`` that a file adapts, the
file's network type merges its tensors for that layer into a one-layer stand-in that holds the weight
(:meth:`~tuner_core.network.NetworkType.merge_into`), file after file: the arithmetic (float32, rounded
once per file to the weight's dtype) is the one of merging into the loaded model, so the result is the same
bit for bit (:func:`merge_networks` merges a loaded model through the same path). Several files combine
linearly: the result is the base plus the sum of ``multiplier * update``.

Biases are never quantised; a network that changes one (LyCORIS ``full`` with bias updates) has its bias
updates added after loading, in :meth:`NetworkMerge.finish`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from tuner_core.architecture import Architecture
from tuner_core.errors import ConfigError, ModelLoadError
from tuner_core.memory.fp8_format import FP8_DTYPES
from tuner_core.network import NetworkType
from tuner_core.network_files import NetworkFile, looks_like, read_network_file
from tuner_core.weights.reader import TensorInfo
from tuner_core.weights.stream import StoredPlan

log = logging.getLogger(__name__)

#: How many unmatched layers a warning names.
LISTED = 12
_PART = re.compile(r"\.(lora_(down|up|A|B)\.(weight|bias)|alpha|dora_scale|(hada|lokr)_\w+|diff(_b)?)$")
_CONV = {3: nn.Conv1d, 4: nn.Conv2d, 5: nn.Conv3d}


def _layer_names(keys: Sequence[str]) -> list[str]:
    """Unmatched tensor names shown once per layer (``x.lora_down.weight`` and ``x.lora_up.weight`` are ``x``)."""
    return sorted({_PART.sub("", k) for k in keys})


def stand_in(path: str, weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Module:
    """A module tree holding one layer at ``path`` (a Linear for a 2-D weight, a convolution for 3-5-D)
    whose parameters are ``weight`` and ``bias``, for a network type to merge into."""
    shape = tuple(weight.shape)
    if len(shape) == 2:
        layer: nn.Module = nn.Linear(shape[1], shape[0], bias=False, device="meta")
    elif len(shape) in _CONV:
        layer = _CONV[len(shape)](shape[1], shape[0], shape[2:], bias=False, device="meta")
    else:
        raise ModelLoadError(f"{path}.weight has shape {shape}: no layer type to merge a network into")
    layer.weight = nn.Parameter(weight, requires_grad=False)
    layer.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)
    root = parent = nn.Module()
    *parents, leaf = path.split(".")
    for part in parents:
        child = nn.Module()
        parent.add_module(part, child)
        parent = child
    parent.add_module(leaf, layer)
    return root


class _ReadFile:
    """One file as read: its network type, its tensors, and (per load) its groups by layer and use."""

    def __init__(self, file: NetworkFile, network_type: NetworkType, tensors: dict[str, torch.Tensor]):
        self.file = file
        self.network_type = network_type
        self.tensors = tensors
        self.groups: dict[str, dict[str, torch.Tensor]] = {}
        self.used: set[str] = set()


class NetworkMerge:
    """Network files merged into each weight as the denoiser's checkpoint streams in: a loader transform
    with ``plan``, then :meth:`finish` on the loaded model. One object serves any number of loads."""

    def __init__(
        self, files: Sequence[NetworkFile], network_types: Sequence[NetworkType], architecture: Architecture
    ) -> None:
        self._files = list(files)
        self._network_types = list(network_types)
        self._architecture = architecture
        self._read: list[_ReadFile] | None = None
        self._biases: dict[str, torch.Tensor] = {}
        self._stored_biases: dict[str, tuple[int, ...]] = {}
        self._started = False
        self._seen = 0

    def _read_files(self) -> list[_ReadFile]:
        if self._read is None:  # read once: a held or reloaded denoiser merges the same tensors
            layout = self._architecture.layout
            self._read = [
                _ReadFile(f, *read_network_file(f, self._network_types, layout)) for f in self._files
            ]
        return self._read

    def start(self, names: Sequence[str], biases: Mapping[str, tuple[int, ...]]) -> None:
        """Group every file's tensors by the layers of a model whose tensor names are ``names``
        (``biases``: the shapes of its ``<layer>.bias`` tensors).

        :raises ConfigError: a file none of whose tensors belongs to a layer of the model.
        """
        paths = list(dict.fromkeys(n[: -len(".weight")] for n in names if n.endswith(".weight")))
        layout = self._architecture.layout
        self._biases = {}
        self._stored_biases = dict(biases)
        self._started = True
        for read in self._read_files():
            read.groups = read.network_type.layer_weights(layout, read.tensors, paths)
            read.used = set()
            if read.tensors and not read.groups:
                raise self._nothing_matched(read)

    def plan(self, stored: Mapping[str, TensorInfo]) -> StoredPlan:
        """Called by the loader with the checkpoint's names before any tensor is read: see :meth:`start`.

        :raises ModelLoadError: a layer to merge into is stored in fp8 (merge into a bf16/fp32 checkpoint).
        """
        biases = {n[: -len(".bias")]: info.shape for n, info in stored.items() if n.endswith(".bias")}
        self.start(list(stored), biases)
        for read in self._read or []:
            for path in read.groups:
                info = stored.get(f"{path}.weight")
                if info is not None and getattr(torch, info.dtype, None) in FP8_DTYPES:
                    raise ModelLoadError(
                        f"{info.file}: {path}.weight is stored in {info.dtype}; {read.file.option} "
                        f"{read.file.path.name} cannot be merged into weights already quantised. Load the "
                        "checkpoint in bf16 (tuner quantises it after merging)"
                    )
        return StoredPlan()

    def __call__(self, key: str, tensor: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{key: tensor}`` with every file's update for that layer merged in (a copy; the rest unchanged)."""
        self._seen += 1
        if not key.endswith(".weight"):
            return {key: tensor}
        path = key[: -len(".weight")]
        if not self._started:  # a loader that does not call plan: group this layer's tensors now
            layout = self._architecture.layout
            for read in self._read_files():
                read.groups.update(read.network_type.layer_weights(layout, read.tensors, [path]))
        reads = [r for r in self._read or [] if path in r.groups]
        if not reads:
            return {key: tensor}
        if tensor.dtype in FP8_DTYPES:
            raise ModelLoadError(
                f"{key} is in {tensor.dtype}: {reads[0].file.option} {reads[0].file.path.name} cannot be "
                "merged into weights already quantised; merge before quantising (load the bf16 checkpoint)"
            )
        weight = tensor.clone()
        for read in reads:
            shape = self._stored_biases.get(path)
            bias = torch.zeros(shape, device=weight.device) if shape is not None else None
            root = stand_in(path, weight, bias)
            layout = self._architecture.layout
            group = read.groups[path]
            unused = read.network_type.merge_into(root, layout, group, read.file.multiplier)
            read.used |= set(group) - set(unused)
            layer = root.get_submodule(path)
            weight = layer.weight.detach()
            if layer.bias is not None and bool(layer.bias.detach().ne(0).any()):
                update = layer.bias.detach().float()
                self._biases[path] = self._biases[path] + update if path in self._biases else update
        return {key: weight}

    def finish(self, model: nn.Module) -> None:
        """After the load: add the bias updates, report each file's unused tensors (a file of which nothing
        was merged is an error), and log what was merged.

        A model whose loader did not stream its tensors through this transform (or one loaded before)
        gets the files merged now, in place, with the same arithmetic.
        """
        if not self._seen:
            self._merge_loaded(model)
        self._add_biases(model)
        for read in self._read_files():
            self._report(read)
            read.groups, read.used = {}, set()
        self._biases, self._started, self._seen = {}, False, 0  # the next load starts afresh

    @torch.no_grad()
    def _merge_loaded(self, model: nn.Module) -> None:
        state = model.state_dict(keep_vars=True)
        biases = {k[: -len(".bias")]: tuple(v.shape) for k, v in state.items() if k.endswith(".bias")}
        self.start(list(state), biases)
        for key, tensor in state.items():
            if key.endswith(".weight"):
                given = tensor.detach()
                merged = self(key, given)[key]
                if merged is not given:
                    tensor.data.copy_(merged)

    @torch.no_grad()
    def _add_biases(self, model: nn.Module) -> None:
        for path, update in self._biases.items():
            layer = model.get_submodule(path)
            if layer.bias is None:
                dtype = layer.weight.dtype if layer.weight.dtype not in FP8_DTYPES else torch.bfloat16
                layer.bias = nn.Parameter(update.to(layer.weight.device, dtype), requires_grad=False)
            else:
                layer.bias.copy_((layer.bias.float() + update.to(layer.bias.device)).to(layer.bias.dtype))

    def _report(self, read: _ReadFile) -> None:
        if read.tensors and not read.used:
            raise self._nothing_matched(read)
        unused = sorted(set(read.tensors) - read.used)
        if unused:
            layers = _layer_names(unused)
            log.warning(
                "%s: %d tensors (%d layers) matched no layer of the model and were not merged: %s%s",
                read.file.path.name,
                len(unused),
                len(layers),
                ", ".join(layers[:LISTED]),
                f" and {len(layers) - LISTED} more" if len(layers) > LISTED else "",
            )
        log.info(
            "%s: merged %s (%s) with multiplier %g",
            read.file.option,
            read.file.path.name,
            read.network_type.name,
            read.file.multiplier,
        )

    def _nothing_matched(self, read: _ReadFile) -> ConfigError:
        keys = set(read.tensors)
        return ConfigError(
            f"{read.file.option} {read.file.path}: none of its {len(keys)} tensors matches a layer of this "
            f"--arch {self._architecture.name} model"
            + looks_like(self._network_types, self._architecture.layout, keys)
            + f" (e.g. {sorted(keys)[0]})"
        )


def merge_networks(
    model: nn.Module,
    files: Sequence[NetworkFile],
    network_types: Sequence[NetworkType],
    architecture: Architecture,
) -> None:
    """Merge ``files`` into an already loaded ``model``, the way :class:`NetworkMerge` merges them while
    loading (same arithmetic, same messages)."""
    NetworkMerge(files, network_types, architecture).finish(model)
