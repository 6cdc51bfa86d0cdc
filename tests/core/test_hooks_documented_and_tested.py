"""Meta-test: every hook spec is called by the engine, implemented by a test plugin, and documented."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

from tuner_core import hookspecs

ROOT = Path(__file__).resolve().parents[2]
SPECS = {
    name: inspect.signature(fn).parameters
    for name, fn in vars(hookspecs).items()
    if name.startswith("tuner_") and callable(fn)
}


def test_there_are_hook_specs():
    assert len(SPECS) >= 12


def test_every_hook_spec_is_called_by_the_engine():
    """Each spec is called somewhere in the core (``hook.<name>(``, or by name for registries)."""
    sources = [
        path.read_text(encoding="utf-8")
        for path in (ROOT / "tuner_core").rglob("*.py")
        if path.name not in ("hookspecs.py", "defaults.py")
    ]
    uncalled = [name for name in SPECS if not any(f"hook.{name}(" in s or f'"{name}"' in s for s in sources)]
    assert not uncalled, f"hook specs the engine never calls: {uncalled}"


def test_every_hook_spec_is_implemented_by_a_plugin_in_a_test():
    """Each spec has a test whose plugin implements it (a ``@hookimpl`` function of that name)."""
    implemented = set()
    for path in (ROOT / "tests").rglob("*.py"):
        implemented |= set(
            re.findall(r"@hookimpl[^\n]*\n\s*def (tuner_\w+)", path.read_text(encoding="utf-8"))
        )
    missing = sorted(set(SPECS) - implemented)
    assert not missing, f"hook specs no test implements through a plugin: {missing}"


def test_every_hook_spec_and_argument_is_documented():
    doc = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    missing = []
    for name, params in SPECS.items():
        heading = f"#### `{name}("
        if heading not in doc:
            missing.append(name)
            continue
        section = doc[doc.index(heading) :][:1500]
        missing += [f"{name}({p})" for p in params if p not in section]
    assert not missing, f"undocumented hooks or arguments in docs/architecture.md: {missing}"


def test_every_hook_spec_has_a_docstring():
    assert all(getattr(hookspecs, name).__doc__ for name in SPECS)
