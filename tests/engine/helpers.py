"""Run tuner commands in-process for the engine tests."""

from __future__ import annotations

from typing import Any

from tuner_cli.parser import build_command_options
from tuner_core.commands.result import CommandResult
from tuner_core.commands.run import run_command
from tuner_core.plugins import Plugins, make_plugin_manager


def run(
    command: str, values: dict[str, Any], plugins: Plugins | None = None, arch: str = "toy"
) -> CommandResult:
    """Validate ``values`` like the CLI does and run ``command`` through the library."""
    plugins = plugins or make_plugin_manager()
    architecture = plugins.architecture(arch)
    options = build_command_options(command, architecture, values, {}, None, plugins.memory_strategies())
    return run_command(command, options, architecture=architecture, plugins=plugins)


def cache_all(toy, **extra: Any) -> None:
    run("cache-latents", {"dataset_config": toy.dataset, "vae": toy.vae, **extra})
    run("cache-text", {"dataset_config": toy.dataset, "text_encoder": toy.text_encoder, **extra})


def train_values(toy, output_dir, **extra: Any) -> dict[str, Any]:
    return {
        "dataset_config": toy.dataset,
        "dit": toy.dit,
        "output_dir": output_dir,
        "learning_rate": 1e-3,
        "seed": 3,
        "max_data_loader_n_workers": 0,
        "network_module": "lora",
        "network_dim": 4,
        **extra,
    }


def build_command_options_for(
    command: str, architecture, values: dict[str, Any], plugins: Plugins | None = None
):
    """The options ``command`` runs with, validated like the CLI does (with ``plugins``' strategies' options)."""
    strategies = plugins.memory_strategies() if plugins is not None else ()
    return build_command_options(command, architecture, values, {}, None, strategies)
