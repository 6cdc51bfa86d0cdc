"""The ``tuner`` command: parse, validate, call the library, report.

This module is the only place that prints for the user or chooses an exit code.
"""

from __future__ import annotations

import argparse
import difflib
import logging
import sys
from collections.abc import Iterator, Sequence
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from tuner_cli import convert_lora
from tuner_cli import parser as options_parser
from tuner_cli.show_plugins import format_plugins
from tuner_core.architecture import Architecture
from tuner_core.commands import COMMAND_OPTIONS, options_class, own_option_names
from tuner_core.config.generate_options import GenerateOptions
from tuner_core.errors import ConfigError, TunerError
from tuner_core.logging_setup import configure_logging
from tuner_core.memory.apply import unavailable_memory_options
from tuner_core.memory.strategy_options import strategy_mixins
from tuner_core.options import option_fields
from tuner_core.plugins import ENTRY_POINT_GROUP, Plugins, make_plugin_manager

if TYPE_CHECKING:
    from tuner_core.sampling.request import SampleRequest

log = logging.getLogger("tuner")

DESCRIPTION = "tuner: fine-tune video diffusion models (plugin architectures, LoRA / LyCORIS networks)."
COMMAND_HELP = {
    "cache-latents": "Encode the dataset's media into latent caches.",
    "cache-text": "Encode the dataset's captions into text-condition caches.",
    "train": "Train a network (LoRA, LyCORIS) or the full model on cached data.",
    "generate": "Generate a video with a trained model.",
}


def _setup_logging() -> None:
    # Before any command imports the heavy libraries: bitsandbytes warns at import time.
    configure_logging()  # $TUNER_LOG_LEVEL; plain lines above the progress bars, third-party noise off


def _top_parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="tuner", description=DESCRIPTION)
    top.add_argument("--version", action="store_true", help="Print the versions of tuner and its plugins.")
    sub = top.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("plugins", help="List loaded plugins, their hooks, architectures and networks.")
    demo = sub.add_parser(
        "demo", help="Run cache, train and generate end to end on a generated sample dataset."
    )
    demo.add_argument(
        "--output_dir", type=Path, default=None, help="Where to put the demo (default: a temp dir)."
    )
    demo.add_argument(
        "--arch", default="framepack", help="Architecture whose demo to run (default: framepack)."
    )
    demo.add_argument(
        "--quick", action="store_true", help="A smaller run through the same steps (for tests)."
    )
    for name, text in COMMAND_HELP.items():
        sub.add_parser(name, help=text + " Needs --arch.", add_help=False)
    convert_lora.add_parser(sub)
    return top


class CommandParser(argparse.ArgumentParser):
    """An argparse parser whose errors are one line naming the problem, not a usage dump and an exit."""

    def error(self, message: str) -> NoReturn:
        raise ConfigError(f"{message} (`{self.prog} --help` lists the options)")

    def parse_command(self, argv: Sequence[str]) -> argparse.Namespace:
        """Parse ``argv``; an unknown option is an error that names the closest known one."""
        namespace, extras = self.parse_known_args(argv)
        for extra in extras:
            name = extra.split("=", 1)[0]
            if not name.startswith("-"):
                self.error(f"unexpected value {extra!r} (each value follows the option it belongs to)")
            known = [o for action in self._actions for o in action.option_strings if o.startswith("--")]
            hint = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
            raise ConfigError(
                f"unknown option {name}."
                + (f" Did you mean {hint[0]}?" if hint else "")
                + f" (`{self.prog} --help` lists the options)"
            )
        return namespace


def _command_parser(command: str, plugins: Plugins, arch_name: str | None) -> CommandParser:
    core = COMMAND_OPTIONS[command]
    architecture = plugins.architecture(arch_name) if arch_name else None
    epilog = None
    if architecture is None:
        names = ", ".join(plugins.architectures().names()) or "none installed"
        epilog = f"Add --arch NAME to see the architecture's own options. Architectures: {names}."
    prog = f"tuner {command}" + (f" --arch {architecture.name}" if architecture else "")
    p = CommandParser(prog=prog, description=COMMAND_HELP[command], epilog=epilog)
    p.add_argument("--arch", metavar="NAME", help="Architecture to use (see `tuner plugins`).")
    p.add_argument(
        "--config_file",
        type=Path,
        metavar="TOML",
        help="Read options from a TOML file; the command line wins.",
    )
    defaults = architecture.option_defaults.get(command, {}) if architecture else {}
    options_parser.add_options(p, core, defaults=defaults, notes=_help_notes(command, plugins, architecture))
    if architecture is not None:
        arch_cls = options_class(command, architecture)
        own = own_option_names(arch_cls, core)
        if own:
            options_parser.add_options(p, arch_cls, title=f"{architecture.name} options", only=own)
    # Every installed strategy's options, each under its own heading: any of them may be asked for.
    strategies = plugins.memory_strategies()
    cls = options_class(command, architecture, strategies)  # refuses a strategy option with a taken name
    for strategy, mixin in strategy_mixins(command, strategies):
        title = f"memory options (from {strategy.name})"
        options_parser.add_options(p, cls, title=title, only={f.name for f in option_fields(mixin)})
    return p


def _help_notes(command: str, plugins: Plugins, architecture: Architecture | None) -> dict[str, str]:
    """What the help of core options adds for this installation: networks installed, strategies missing."""
    training = command == "train"
    notes = {
        name: "Not available yet: no installed memory strategy acts on it."
        for name in unavailable_memory_options(plugins, training=training)
    }
    if architecture is not None:
        layout = architecture.layout
        limit = layout.max_blocks_to_swap_training if training else layout.max_blocks_to_swap_inference
        if limit is not None:
            notes["blocks_to_swap"] = f"At most {limit} for --arch {architecture.name}. " + notes.get(
                "blocks_to_swap", ""
            )
    if "lycoris" not in plugins.networks():
        notes["lycoris"] = "Not available yet: no installed network type is called lycoris."
    networks = [n.name + (f" (also {', '.join(n.aliases)})" if n.aliases else "") for n in plugins.networks()]
    notes["network_module"] = "Installed: " + ("; ".join(networks) or "none") + "."
    return notes


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
    namespace = parser.parse_command(argv)
    typed = {k: v for k, v in vars(namespace).items() if k not in ("arch", "config_file")}
    architecture = plugins.architecture(arch_name)
    options = options_parser.build_command_options(
        command, architecture, typed, file_raw, str(known.config_file), plugins.memory_strategies()
    )
    from tuner_core.commands.run import run_command

    result = run_command(
        command, options, architecture=architecture, plugins=plugins, jobs=_typed_jobs(options, architecture)
    )
    for line in result.summary():
        print(line)
    return 0


def _typed_jobs(options: Any, architecture: Architecture) -> Iterator[SampleRequest] | None:
    """``generate --interactive``: the prompts typed at this terminal, read as the previous video is done.

    The library would report through the log; here the greeting and a skipped line's error go to the
    user's terminal, with a ``> `` marker before each line is read.
    """
    if not isinstance(options, GenerateOptions) or not options.interactive:
        return None
    if options.latent_path or options.save_merged_model:
        return None  # not interactive, or interactive is moot (decoding latents, saving a merged model)
    from tuner_core.sampling.jobs import interactive_requests

    return interactive_requests(
        architecture.generation_request(options),
        sys.stdin,
        prompt_out=print,
        ask=lambda marker: print(marker, end="", flush=True),
    )


def _all_option_names(command: str, plugins: Plugins) -> list[str]:
    """Every option name ``command`` may take under some architecture (a config file is read before the
    architecture is known); whether a name clashes is for :func:`options_class` to say once it is."""
    names = [f.name for f in option_fields(COMMAND_OPTIONS[command])]
    for arch in plugins.architectures():
        names += [f.name for f in option_fields(options_class(command, arch))]
    for _, mixin in strategy_mixins(command, plugins.memory_strategies()):
        names += [f.name for f in option_fields(mixin)]
    return names


def _versions() -> str:
    """``tuner 0.1.0`` and one line per installed plugin distribution (without importing any plugin)."""
    lines = [f"tuner {metadata.version('tuner')}"]
    seen = set()
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = ep.dist
        if dist is not None and dist.metadata["Name"] not in seen:
            seen.add(dist.metadata["Name"])
            lines.append(f"  {dist.metadata['Name']} {dist.version} (plugin {ep.name})")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``tuner`` console script; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    _setup_logging()
    top = _top_parser()
    if argv == ["--version"]:
        print(_versions())
        return 0
    if not argv or argv[0] not in {*COMMAND_HELP, "plugins", "demo", "convert-lora"}:
        top.parse_args(argv)  # prints usage / errors for unknown commands
        top.print_help()
        return 2
    command, rest = argv[0], argv[1:]
    try:
        plugins = make_plugin_manager()
        if command == "plugins":
            top.parse_args(argv)
            print(format_plugins(plugins))
            return 0
        if command == "convert-lora":
            return convert_lora.run_convert_lora(top.parse_args(argv), plugins)
        if command == "demo":
            args = top.parse_args(argv)
            from tuner_cli.demo import run_demo

            return run_demo(plugins, args.output_dir, args.arch, quick=args.quick)
        return run_architecture_command(command, rest, plugins)
    except TunerError as exc:
        print(f"tuner {command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"tuner {command}: interrupted; nothing half-written was kept", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
