"""Plugins use the core's public API only: ``tuner_core``'s names and the documented public submodules."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import tuner_core

ROOT = Path(__file__).resolve().parents[2]
PLUGIN_TREES = [ROOT / "plugins", ROOT / "tests" / "toy_arch"]


def _core_imports() -> list[tuple[Path, int, str, list[str]]]:
    """``(file, line, module, names)`` of every ``tuner_core`` import in the plugin trees."""
    found = []
    for tree in PLUGIN_TREES:
        for path in tree.rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tuner_core"):
                    found.append((path, node.lineno, node.module, [a.name for a in node.names]))
                elif isinstance(node, ast.Import):
                    for alias in node.names:
                        if alias.name.startswith("tuner_core"):
                            found.append((path, node.lineno, alias.name, []))
    return found


def test_the_plugins_import_tuner_core_somewhere():
    assert len(_core_imports()) > 20  # the scan sees the imports it checks


def test_plugins_import_only_public_modules():
    public = {"tuner_core", *tuner_core.PUBLIC_MODULES}
    private = [f"{p.relative_to(ROOT)}:{line} {m}" for p, line, m, _ in _core_imports() if m not in public]
    assert not private, "plugins import core modules that are not public: " + ", ".join(private)


def test_plugins_import_only_exported_names():
    wrong = []
    for path, line, module, names in _core_imports():
        exported = set(getattr(importlib.import_module(module), "__all__", ()))
        wrong += [f"{path.relative_to(ROOT)}:{line} {module}.{n}" for n in names if n not in exported]
    assert not wrong, "plugins import names their module does not export: " + ", ".join(wrong)


def test_every_public_module_is_documented_for_plugin_authors():
    doc = (ROOT / "docs" / "writing-plugins.md").read_text(encoding="utf-8")
    assert all(f"`{m}`" in doc for m in tuner_core.PUBLIC_MODULES)
    assert all(hasattr(importlib.import_module(m), "__all__") for m in tuner_core.PUBLIC_MODULES)
