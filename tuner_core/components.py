"""The model components of one command, loaded when first asked for and released when no longer needed.

A command used to load everything it might need up front. FramePack's generation shows why that cannot
stay: the 8B LLaMA encodes the prompt once and must be gone before the 13B DiT loads. :class:`Components`
is the ``models`` mapping every hook receives; reading ``models["vae"]`` loads the VAE (through the
``tuner_load_model`` hook) the first time, and :meth:`Components.release` frees a component.
"""

from __future__ import annotations

import gc
import logging
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import torch

from tuner_core.architecture import Architecture
from tuner_core.plugins import Plugins
from tuner_core.weights.stream import Transform

log = logging.getLogger(__name__)


class Components(Mapping[str, Any]):
    """Lazily loaded components of ``architecture`` for one command's ``options``.

    :param names: the components this command may use (``architecture.components(command, options)``).
    :param device: where a component is loaded unless :meth:`load` is given another device.
    :param preloaded: components that already exist (the model being trained, when sampling); they are
        never released, since their owner still holds them.
    :param transforms: per component, the memory strategies' tensor rewrite while its weights stream in.
    :param prepare: per component, what to do to it once loaded (merge LoRA files, apply memory
        strategies); returns the component to use.
    :param load_devices: per component, where its weights are loaded when not on the command's device
        (block swap loads the denoiser on the CPU; its strategy then places each weight).
    :param hold: keep components loaded when the architecture releases one (``--interactive`` keeps
        every model between typed prompts); :meth:`release` without names still frees everything.

    :attr:`memo` keeps what an architecture computed from components (encoded prompts, say) for as long
    as this object lives, so the jobs of one ``tuner generate --from_file`` run share it.
    """

    def __init__(
        self,
        architecture: Architecture,
        plugins: Plugins,
        options: Any,
        device: torch.device,
        names: Iterable[str],
        *,
        preloaded: Mapping[str, Any] | None = None,
        transforms: Mapping[str, Transform] | None = None,
        prepare: Mapping[str, Callable[[Any], Any]] | None = None,
        hold: bool = False,
        load_devices: Mapping[str, torch.device] | None = None,
    ) -> None:
        self._architecture = architecture
        self._plugins = plugins
        self._options = options
        self._device = device
        self._loaded: dict[str, Any] = dict(preloaded or {})
        self._kept = frozenset(self._loaded)
        #: How often each component was loaded from its files (tests and logs read it).
        self.load_counts: Counter[str] = Counter()
        #: Values derived from the components, kept between jobs (see the class docstring).
        self.memo: dict[Any, Any] = {}
        self._transforms = dict(transforms or {})
        self._prepare = dict(prepare or {})
        self._load_devices = dict(load_devices or {})
        self._offloaded: set[str] = set()
        self._hold = hold
        self._names = tuple(dict.fromkeys([*self._loaded, *names]))

    def load(self, name: str, *, device: torch.device | None = None) -> Any:
        """The component ``name``, loaded onto ``device`` (default: the command's) if it is not loaded yet."""
        if name not in self._names:
            raise KeyError(f"{name!r} is not a component of this command (it has {', '.join(self._names)})")
        if name in self._offloaded:
            self._offloaded.discard(name)
            self._loaded[name] = self._loaded[name].to(device or self._device)
        if name not in self._loaded:
            self.load_counts[name] += 1
            component = self._plugins.hook.tuner_load_model(
                architecture=self._architecture,
                component=name,
                options=self._options,
                device=device or self._load_devices.get(name, self._device),
                transform=self._transforms.get(name),
            )
            if name in self._prepare:
                component = self._prepare[name](component)
            self._loaded[name] = component
        return self._loaded[name]

    def release(self, *names: str) -> None:
        """Drop the named components (all loaded ones when none is named) and return their memory.

        Preloaded components stay: their owner (the trainer) still uses them. While holding, only a
        release of everything (no names) frees anything.
        """
        if names and self._hold:
            return
        released = False
        for name in names or tuple(self._loaded):
            self._offloaded.discard(name)
            if name not in self._kept and self._loaded.pop(name, None) is not None:
                log.debug("released %s", name)
                released = True
        if not released:
            return  # a full collection costs up to a second in a big process: only when memory came free
        gc.collect()  # the last references may sit in reference cycles (modules and their hooks)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def offload(self, *names: str) -> None:
        """Move the named loaded components to the CPU until they are read again (then they move back).

        For a component a later phase needs once more (the VAE decodes after the DiT ran): its device
        memory is free meanwhile, and it is not read from its files twice.
        """
        for name in names:
            component = self._loaded.get(name)
            if name in self._kept or not isinstance(component, torch.nn.Module):
                continue
            self._loaded[name] = component.to("cpu")
            self._offloaded.add(name)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    @property
    def loaded(self) -> tuple[str, ...]:
        """The components in memory now."""
        return tuple(self._loaded)

    def __contains__(self, name: object) -> bool:
        return name in self._names  # Mapping's default would load the component to find out

    def __getitem__(self, name: str) -> Any:
        return self.load(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)
