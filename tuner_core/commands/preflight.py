"""Pre-flight: every check that needs no model, run before any model loads, all problems reported at once.

Loading FramePack's DiT takes minutes and tens of gigabytes; a misspelled optimizer found after that is a
lost quarter of an hour, and finding the next problem on the next run loses another. So each command first
checks what can be checked from the options and the files they name (inputs exist, outputs are writable,
named plugins and optimizers exist, a state fits the run, prompt files parse, memory options are within
limits), asks the architecture for its own checks, and raises one :class:`ConfigError` listing everything.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs

from tuner_core.architecture import Architecture
from tuner_core.config.cache_options import CacheOptions
from tuner_core.config.dataset import load_dataset_config
from tuner_core.config.generate_options import GenerateOptions
from tuner_core.config.train_options import TrainOptions
from tuner_core.errors import ConfigError, NotAvailableError, NotSupportedError, TunerError
from tuner_core.memory.apply import check_memory_options
from tuner_core.network import NetworkType
from tuner_core.network_files import (
    NetworkFile,
    base_weight_files,
    denoiser_layer_paths,
    lora_weight_files,
    merge_network_types,
    network_file_problems,
)
from tuner_core.options import meta, option_fields, sequence_item_type, unwrap_optional
from tuner_core.plugins import Plugins
from tuner_core.sampling.jobs import read_prompt_jobs
from tuner_core.sampling.outputs import read_latent_header
from tuner_core.sampling.prompts import read_prompt_file
from tuner_core.training.lr_schedulers import check_lr_options, ignored_lr_options
from tuner_core.training.model_setup import DEFAULT_NETWORK_DIM, memory_settings
from tuner_core.training.optimizers import check_optimizer_options, parse_optimizer_args
from tuner_core.training.resume import resume_problems, run_settings

log = logging.getLogger(__name__)


@attrs.define
class Problems:
    """The problems found so far, each with the error class it would raise alone."""

    found: list[tuple[str, type[TunerError]]] = attrs.field(factory=list)

    def add(self, message: str, kind: type[TunerError] = ConfigError) -> None:
        """Record one problem (a sentence naming the option and what to do)."""
        self.found.append((message, kind))

    def collect(self, check: Callable[[], Any]) -> Any:
        """Run ``check``; record the :class:`TunerError` it raises. Returns its result (``None`` on error)."""
        try:
            return check()
        except TunerError as exc:
            self.add(str(exc), type(exc))
            return None

    def raise_if_any(self) -> None:
        """One error for everything found: the problem's own for one, a :class:`ConfigError` listing several."""
        if len(self.found) == 1:
            message, kind = self.found[0]
            raise kind(message)
        if self.found:
            raise ConfigError(
                f"{len(self.found)} problems, found before loading any model:\n"
                + "\n".join(f"  - {message}" for message, _ in self.found)
            )


def preflight(command: str, options: Any, architecture: Architecture, plugins: Plugins) -> None:
    """Check ``command``'s options without loading a model; raise one :class:`ConfigError` for all problems."""
    if command not in architecture.commands:
        raise NotSupportedError(
            f"--arch {architecture.name} does not support tuner {command} (it supports "
            + ", ".join(architecture.commands)
            + ")"
        )
    problems = Problems()
    _check_paths(options, problems)
    {"train": _train, "generate": _generate}.get(command, _cache)(options, architecture, plugins, problems)
    for message in architecture.check_options(command, options):
        problems.add(message)
    problems.raise_if_any()


# -- files ------------------------------------------------------------------------------------------------


def _path_values(instance: Any) -> Iterator[tuple[str, str | None, Path]]:
    """``(option name, output kind, path)`` for every path an options object holds."""
    for field in option_fields(type(instance)):
        inner, _ = unwrap_optional(field.type)
        if inner is not Path and sequence_item_type(inner) is not Path:
            continue
        value = getattr(instance, field.name)
        for path in value if isinstance(value, (list, tuple)) else [value]:
            if path is not None:
                yield field.name, meta(field).output, Path(path)


def _check_paths(instance: Any, problems: Problems) -> None:
    for name, output, path in _path_values(instance):
        if output == "directory":
            problem = writable_directory_problem(path)
        elif output == "file":
            problem = writable_file_problem(path)
        elif not path.exists():
            problem = "does not exist"
        else:
            problem = None
        if problem:
            problems.add(f"--{name} {path}: {problem}")


def _existing_ancestor(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def writable_directory_problem(path: Path) -> str | None:
    """Why tuner could not create or write files in directory ``path`` (``None`` when it can)."""
    if path.exists() and not path.is_dir():
        return "is a file, not a directory; give a directory (it is created if missing)"
    ancestor = _existing_ancestor(path)
    if not ancestor.is_dir():
        return f"{ancestor} is a file, so the directory cannot be created there"
    if not os.access(ancestor, os.W_OK | os.X_OK):
        return f"no permission to write in {ancestor}"
    try:  # permissions can say yes where the file system says no (read-only mounts)
        fd, probe = tempfile.mkstemp(prefix=".tuner-write-test-", dir=ancestor)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        return f"cannot write in {ancestor} ({exc.strerror or exc})"
    return None


def writable_file_problem(path: Path) -> str | None:
    """Why tuner could not write the file ``path`` (``None`` when it can)."""
    if path.is_dir():
        return "is a directory; give a file name"
    problem = writable_directory_problem(path.parent)
    return f"its directory {problem}" if problem else None


# -- per command ---------------------------------------------------------------------------------------------


def _dataset(options: CacheOptions | TrainOptions, architecture: Architecture, problems: Problems) -> Any:
    return problems.collect(lambda: load_dataset_config(options.dataset_config, architecture.dataset_options))


def _cache(options: CacheOptions, architecture: Architecture, plugins: Plugins, problems: Problems) -> None:
    config = _dataset(options, architecture, problems) if options.dataset_config.exists() else None
    for ds in config.datasets if config else ():
        problem = writable_directory_problem(ds.cache_directory)
        if problem:
            problems.add(f"{ds.table}: cache_directory {ds.cache_directory}: {problem}")


def _memory(
    options: Any, architecture: Architecture, plugins: Plugins, problems: Problems, *, training: bool
) -> None:
    settings = memory_settings(options, training=training)
    base_flag = "--fp8_base" if training else "--fp8"
    if options.fp8_scaled and not (options.fp8_base if training else options.fp8):
        log.info(
            "--fp8_scaled implies %s (fp8 weights with block-wise scales), as in the reference", base_flag
        )
    layout = architecture.layout
    limit = layout.max_blocks_to_swap_training if training else layout.max_blocks_to_swap_inference
    if limit is not None and settings.blocks_to_swap > limit:
        problems.add(
            f"--blocks_to_swap {settings.blocks_to_swap} is above the most --arch {architecture.name} can "
            f"swap {'in training' if training else 'in inference'} ({limit}); give at most {limit}"
        )
    problems.collect(lambda: check_memory_options(settings, plugins))


def _train(options: TrainOptions, architecture: Architecture, plugins: Plugins, problems: Problems) -> None:
    if options.dataset_config.exists():
        _dataset(options, architecture, problems)
    _memory(options, architecture, plugins, problems, training=True)
    network = None
    if options.network_module is not None:
        try:
            network = plugins.network(options.network_module)
        except ConfigError as exc:
            problems.add(f"--network_module: {exc}")
        else:
            args = problems.collect(
                lambda: parse_optimizer_args(options.network_args or [], option="--network_args")
            )
            for message in network.check_args(args or {}):
                problems.add(message)
    if options.dim_from_weights and options.network_weights is None:
        problems.add("--dim_from_weights reads the rank from --network_weights: give --network_weights too")
    _network_files(base_weight_files(options), options, architecture, plugins, problems)
    problems.collect(
        lambda: check_optimizer_options(options.optimizer_type, options.learning_rate, options.optimizer_args)
    )
    problems.collect(
        lambda: check_lr_options(options, None if options.max_train_epochs else options.max_train_steps)
    )
    for message in ignored_lr_options(options):
        log.warning("%s", message)
    if options.resume is not None and options.resume.exists():
        for message in _resume(options, architecture, network):
            problems.add(message)
    if options.sample_prompts is not None and options.sample_prompts.is_file():
        requests = problems.collect(lambda: read_prompt_file(options.sample_prompts))
        if requests and not architecture.can_sample:
            problems.add(
                f"--sample_prompts: --arch {architecture.name} cannot generate samples yet; train without "
                "--sample_prompts",
                NotAvailableError,
            )
        elif requests:
            problems.collect(lambda: architecture.sample_components(options))
            for index, request in enumerate(requests):
                for message in architecture.check_request(request, options):
                    problems.add(f"--sample_prompts {options.sample_prompts}: prompt {index + 1}: {message}")


def _resume(options: TrainOptions, architecture: Architecture, network: NetworkType | None) -> list[str]:
    """What keeps ``--resume`` from continuing the state with these options."""
    unknown_network = options.network_module is not None and network is None  # reported on its own
    expected = run_settings(
        architecture.name,
        options,
        network_type=network.name if network else None,
        network_dim=(options.network_dim or DEFAULT_NETWORK_DIM) if options.network_module else None,
    )
    if options.dim_from_weights or unknown_network:
        expected.pop("network_dim")
    if unknown_network:
        for key in ("network_type", "network_alpha"):
            expected.pop(key)
    return resume_problems(options.resume, expected)


def _generate(
    options: GenerateOptions, architecture: Architecture, plugins: Plugins, problems: Problems
) -> None:
    if options.save_merged_model is None:
        if not architecture.can_sample:
            problems.add(
                f"tuner generate --arch {architecture.name}: this architecture cannot generate yet "
                "(--save_merged_model works)",
                NotAvailableError,
            )
        for path in options.latent_path:
            if path.is_file():
                problems.collect(lambda path=path: read_latent_header(path))
        if not options.latent_path and architecture.can_sample:
            _jobs(options, architecture, problems)
        _memory(options, architecture, plugins, problems, training=False)
    _network_files(lora_weight_files(options), options, architecture, plugins, problems)


def _network_files(
    files: list[NetworkFile],
    options: GenerateOptions | TrainOptions,
    architecture: Architecture,
    plugins: Plugins,
    problems: Problems,
) -> None:
    """``--lora_weight`` / ``--base_weights``: each file readable by a network type and for this model."""
    if not files:
        return
    try:
        network_types = merge_network_types(options, plugins)
    except ConfigError as exc:
        problems.add(f"--lycoris: {exc}")
        return
    layers = denoiser_layer_paths(options, architecture)
    for message in network_file_problems(files, network_types, architecture, layers):
        problems.add(message)


def _jobs(options: GenerateOptions, architecture: Architecture, problems: Problems) -> None:
    """The command line's request, or each ``--from_file`` job, as the architecture checks requests."""
    base = problems.collect(lambda: architecture.generation_request(options))
    if base is None:
        return
    jobs = [base]
    if options.from_file is not None and options.from_file.is_file():
        jobs = problems.collect(lambda: read_prompt_jobs(options.from_file, base)) or []
    elif options.interactive:
        jobs = []  # typed later; each is checked when it is typed
    for index, job in enumerate(jobs):
        where = f"{options.from_file}: job {index + 1}: " if options.from_file is not None else ""
        for message in architecture.check_request(job, options):
            problems.add(where + message)
