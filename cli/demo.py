"""``tuner demo``: cache, train and generate end to end on a generated sample dataset.

The architecture's :meth:`~tuner_core.architecture.Architecture.demo` writes the dataset and the models and
says which options each command runs with; this module runs the four commands as the CLI would, shows each
as the command line that does the same, and ends with where every file went.
"""

from __future__ import annotations

import shlex
import tempfile
import textwrap
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tuner_cli import parser as options_parser
from tuner_core.architecture import COMMANDS, Architecture
from tuner_core.commands.result import CommandResult
from tuner_core.commands.run import run_command
from tuner_core.plugins import Plugins

#: Output kinds in the order the summary lists them; other kinds follow in the order they came.
SUMMARY_ORDER = ("video", "weights", "loss plot", "samples", "state")
#: Width the printed command lines wrap at (with a shell line continuation).
LINE_WIDTH = 100


def run_demo(
    plugins: Plugins, output_dir: Path | None, arch_name: str = "framepack", *, quick: bool = False
) -> int:
    """Run the four commands of the architecture's demo plan; print where everything went.

    :param output_dir: where the demo's files go (default: a new temporary directory).
    :param quick: ask the architecture for its smaller plan (fewer clips and steps, the same commands).
    """
    architecture = plugins.architecture(arch_name)
    directory = (output_dir or Path(tempfile.mkdtemp(prefix="tuner-demo-"))).resolve()
    directory.mkdir(parents=True, exist_ok=True)
    print(f"tuner demo (--arch {architecture.name}{' --quick' if quick else ''}) in {directory}")
    started = time.monotonic()
    # Only a quick demo passes the keyword, so a plugin whose demo() predates it still runs the full one.
    plan = architecture.demo(directory, quick=True) if quick else architecture.demo(directory)
    print(f"wrote the sample dataset and models in {time.monotonic() - started:.0f} s")
    print(f"Each step is shown as the tuner command that does the same (paths relative to {directory}).")
    results: dict[str, CommandResult] = {}
    for command in COMMANDS:
        values = dict(plan[command])
        print(f"\n== {command_line(command, architecture.name, values, directory)}")
        options = options_parser.build_command_options(
            command, architecture, values, {}, None, plugins.memory_strategies()
        )
        step_started = time.monotonic()
        results[command] = run_command(command, options, architecture=architecture, plugins=plugins)
        for line in results[command].summary():
            print(line)
        print(f"({time.monotonic() - step_started:.0f} s)")
    for line in summary_lines(architecture, plan, results, time.monotonic() - started):
        print(line)
    return 0


def command_line(command: str, arch_name: str, values: Mapping[str, Any], directory: Path) -> str:
    """The ``tuner`` command line that runs ``command`` with ``values``, wrapped at :data:`LINE_WIDTH`.

    Paths under ``directory`` are shown relative to it; false flags are left out; an option and its
    values stay on one line.
    """
    parts = [f"tuner {command} --arch {arch_name}"]
    for name, value in values.items():
        if value is False or value is None:
            continue
        items = [] if value is True else value if isinstance(value, (list, tuple)) else [value]
        parts.append(" ".join([f"--{name}", *(shlex.quote(_shown(item, directory)) for item in items)]))
    lines = [parts[0]]
    for part in parts[1:]:
        if len(lines[-1]) + 1 + len(part) > LINE_WIDTH - 2:
            lines[-1] += " \\"
            lines.append("    " + part)
        else:
            lines[-1] += " " + part
    return "\n".join(lines)


def _shown(value: Any, directory: Path) -> str:
    """``value`` as a command-line word: a path under ``directory`` relative to it."""
    text = str(value)
    if isinstance(value, (str, Path)) and Path(text).is_absolute():
        try:
            return str(Path(text).relative_to(directory))
        except ValueError:
            return text
    return text


def summary_lines(
    architecture: Architecture,
    plan: Mapping[str, Mapping[str, Any]],
    results: Mapping[str, CommandResult],
    seconds: float,
) -> list[str]:
    """The closing summary: the dataset and caches, every file the commands wrote, the loss, the notes."""
    lines = [f"\nDone in {seconds:.0f} s. What the demo made:"]
    dataset = plan.get("cache-latents", {}).get("dataset_config")
    if dataset is not None:
        lines.append(f"  {'dataset':10s} {dataset}")
        lines += [f"  {'caches':10s} {path}" for path in _cache_directories(architecture, Path(dataset))]
    outputs: dict[str, list[Path]] = {}
    for result in results.values():
        for kind, paths in result.outputs.items():
            outputs.setdefault(kind, []).extend(paths)
    kinds = [k for k in SUMMARY_ORDER if k in outputs] + [k for k in outputs if k not in SUMMARY_ORDER]
    lines += [f"  {kind:10s} {path}" for kind in kinds for path in outputs[kind]]
    train = results.get("train")
    if train is not None and "first loss" in train.counts:
        first, last, steps = train.counts["first loss"], train.counts["last loss"], train.counts["steps"]
        lines.append(f"  {'loss':10s} {first:.4g} at the first step, {last:.4g} at step {steps}")
    notes = architecture.demo_notes()
    for note in notes:
        lines += ["", textwrap.fill(note, LINE_WIDTH)]
    return lines


def _cache_directories(architecture: Architecture, dataset: Path) -> list[Path]:
    """The cache directories of the dataset config's datasets, each once."""
    from tuner_core.config.dataset import load_dataset_config

    config = load_dataset_config(dataset, architecture.dataset_options)
    return list(dict.fromkeys(settings.cache_directory for settings in config.datasets))
