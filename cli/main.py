"""The ``tuner`` command: parse, validate, call the library, report.

This module is the only place that prints for the user or chooses an exit code.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tuner_cli import parser as options_parser
from tuner_cli.show_plugins import format_plugins
from tuner_core.commands import COMMAND_OPTIONS
from tuner_core.errors import ConfigError, TunerError
from tuner_core.plugins import Plugins, make_plugin_manager

log = logging.getLogger("tuner")

DESCRIPTION = "tuner: fine-tune video diffusion models (plugin architectures, LoRA / LyCORIS networks)."
COMMAND_HELP = {
    "cache-latents": "Encode the dataset's media into latent caches.",
    "cache-text": "Encode the dataset's captions into text-condition caches.",
    "train": "Train a network (LoRA, LyCORIS) or the full model on cached data.",
    "generate": "Generate a video with a trained model.",
}


def _setup_logging() -> None:
    level = os.environ.get("TUNER_LOG_LEVEL", "INFO").upper()
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def _top_parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="tuner", description=DESCRIPTION)
    sub = top.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("plugins", help="List loaded plugins, their hooks, architectures and networks.")
    demo = sub.add_parser(
        "demo", help="Run cache, train and generate end to end on a generated sample dataset."
    )
    demo.add_argument(
        "--output_dir", type=Path, default=None, help="Where to put the demo (default: a temp dir)."
    )
    demo.add_argument("--arch", default="toy", help="Architecture whose demo to run (default: toy).")
    for name, text in COMMAND_HELP.items():
        sub.add_parser(name, help=text + " Needs --arch.", add_help=False)
    return top


def _command_parser(command: str, plugins: Plugins, arch_name: str | None) -> argparse.ArgumentParser:
    core = COMMAND_OPTIONS[command]
    architecture = plugins.architecture(arch_name) if arch_name else None
    epilog = None
    if architecture is None:
        names = ", ".join(plugins.architectures().names()) or "none installed"
        epilog = f"Add --arch NAME to see the architecture's own options. Architectures: {names}."
    p = argparse.ArgumentParser(prog=f"tuner {command}", description=COMMAND_HELP[command], epilog=epilog)
    p.add_argument("--arch", metavar="NAME", help="Architecture to use (see `tuner plugins`).")
    p.add_argument(
        "--config_file",
        type=Path,
        metavar="TOML",
        help="Read options from a TOML file; the command line wins.",
    )
    defaults = architecture.option_defaults.get(command, {}) if architecture else {}
    options_parser.add_options(p, core, defaults=defaults)
    if architecture is not None:
        arch_cls = architecture.options.get(command)
        options_parser.check_conflicts(core, arch_cls, architecture.name)
        if arch_cls is not None:
            options_parser.add_options(p, arch_cls, title=f"{architecture.name} options")
    return p


def run_architecture_command(command: str, argv: Sequence[str], plugins: Plugins) -> int:
    """Parse and validate an architecture command, then run it through the library."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--arch")
    pre.add_argument("--config_file", type=Path)
    pre.add_argument("-h", "--help", action="store_true")
    known, _ = pre.parse_known_args(argv)

    file_raw: dict[str, Any] = {}
    if known.config_file is not None:
        file_raw = options_parser.config_file_values(
            known.config_file, known=[*_all_option_names(command, plugins), "arch"]
        )
    arch_name = known.arch or file_raw.pop("arch", None)
    file_raw.pop("arch", None)
    if arch_name is None and not known.help:
        names = ", ".join(plugins.architectures().names()) or "none (install an architecture plugin)"
        raise ConfigError(f"--arch is required. Available architectures: {names}")

    parser = _command_parser(command, plugins, arch_name)
    if known.help:
        parser.print_help()
        return 0
    namespace = parser.parse_args(argv)
    typed = {k: v for k, v in vars(namespace).items() if k not in ("arch", "config_file")}
    architecture = plugins.architecture(arch_name)
    core_options, arch_options = options_parser.build_command_options(
        command, COMMAND_OPTIONS[command], architecture, typed, file_raw, str(known.config_file)
    )
    from tuner_core.commands.run import run_command

    result = run_command(command, core_options, arch_options, architecture=architecture, plugins=plugins)
    for line in result.summary():
        print(line)
    return 0


def _all_option_names(command: str, plugins: Plugins) -> list[str]:
    from tuner_core.options import option_fields

    names = [f.name for f in option_fields(COMMAND_OPTIONS[command])]
    for arch in plugins.architectures():
        cls = arch.options.get(command)
        if cls is not None:
            names += [f.name for f in option_fields(cls)]
    return names


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``tuner`` console script; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    _setup_logging()
    top = _top_parser()
    if not argv or argv[0] not in {*COMMAND_HELP, "plugins", "demo"}:
        args = top.parse_args(argv)  # prints usage / errors for unknown commands
        top.print_help()
        return 2
    command, rest = argv[0], argv[1:]
    try:
        plugins = make_plugin_manager()
        if command == "plugins":
            top.parse_args(argv)
            print(format_plugins(plugins))
            return 0
        if command == "demo":
            args = top.parse_args(argv)
            from tuner_cli.demo import run_demo

            return run_demo(plugins, args.output_dir, args.arch)
        return run_architecture_command(command, rest, plugins)
    except TunerError as exc:
        print(f"tuner {command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"tuner {command}: interrupted; nothing half-written was kept", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
