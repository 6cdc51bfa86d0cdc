"""What a command returns to its caller."""

from __future__ import annotations

from pathlib import Path

import attrs


@attrs.frozen
class CommandResult:
    """What a command produced: files by kind, and numbers worth reporting (counts, a loss)."""

    command: str
    outputs: dict[str, list[Path]] = attrs.field(factory=dict)
    counts: dict[str, int | float] = attrs.field(factory=dict)

    def summary(self) -> list[str]:
        """Human-readable lines for the CLI's closing message (floats to 4 significant digits)."""
        shown = {k: f"{v:.4g}" if isinstance(v, float) else v for k, v in self.counts.items()}
        lines = [f"{self.command}: " + ", ".join(f"{k}: {v}" for k, v in shown.items())] if shown else []
        for kind, paths in self.outputs.items():
            lines += [f"{kind}: {p}" for p in paths]
        return lines
