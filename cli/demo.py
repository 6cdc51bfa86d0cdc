"""``tuner demo``: cache, train and generate end to end on a generated sample dataset."""

from __future__ import annotations

import tempfile
from pathlib import Path

from tuner_cli import parser as options_parser
from tuner_core.architecture import COMMANDS
from tuner_core.commands.run import run_command
from tuner_core.plugins import Plugins


def run_demo(plugins: Plugins, output_dir: Path | None, arch_name: str = "toy") -> int:
    """Run the four commands of the architecture's demo plan; print where everything went."""
    architecture = plugins.architecture(arch_name)
    directory = (output_dir or Path(tempfile.mkdtemp(prefix="tuner-demo-"))).resolve()
    directory.mkdir(parents=True, exist_ok=True)
    print(f"tuner demo (--arch {architecture.name}) in {directory}")
    plan = architecture.demo(directory)
    outputs: dict[str, list[Path]] = {}
    for command in COMMANDS:
        print(f"\n== tuner {command}")
        options = options_parser.build_command_options(
            command, architecture, dict(plan[command]), {}, None, plugins.memory_strategies()
        )
        result = run_command(command, options, architecture=architecture, plugins=plugins)
        for line in result.summary():
            print(line)
        for kind, paths in result.outputs.items():
            outputs.setdefault(kind, []).extend(paths)
    print("\nDone. What the demo produced:")
    for kind in ("video", "weights", "loss plot", "samples"):
        for path in outputs.get(kind, []):
            print(f"  {kind:10s} {path}")
    return 0
