"""The core depends on no plugin and no CLI: scan every import statement in tuner_core."""

from __future__ import annotations

import ast
from pathlib import Path

CORE = Path(__file__).resolve().parents[2] / "tuner_core"
FORBIDDEN = ("tuner_framepack", "tuner_lora", "tuner_cli", "tuner_toy", "plugins", "cli")


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_core_imports_no_plugin():
    offenders = {}
    for path in CORE.rglob("*.py"):
        bad = {m for m in imported_modules(path) if m.split(".")[0] in FORBIDDEN}
        if bad:
            offenders[str(path.relative_to(CORE))] = sorted(bad)
    assert not offenders, f"tuner_core imports plugins or the CLI: {offenders}"


def test_scanner_sees_imports():
    assert "tuner_core.errors" in imported_modules(CORE / "registry.py")
