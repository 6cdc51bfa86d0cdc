"""Meta-test: every hook spec has a test named after it and an entry in docs/architecture.md."""

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


def test_every_hook_spec_has_a_test():
    test_names = set()
    for path in (ROOT / "tests").rglob("test_*.py"):
        test_names |= set(re.findall(r"def (test_\w+)", path.read_text(encoding="utf-8")))
    untested = [name for name in SPECS if not any(name in t for t in test_names)]
    assert not untested, f"hook specs without a test named after them: {untested}"


def test_every_hook_spec_and_argument_is_documented():
    doc = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    missing = []
    for name, params in SPECS.items():
        if f"`{name}" not in doc:
            missing.append(name)
            continue
        section = doc[doc.index(f"`{name}") :][:1500]
        missing += [f"{name}({p})" for p in params if p not in section]
    assert not missing, f"undocumented hooks or arguments in docs/architecture.md: {missing}"


def test_every_hook_spec_has_a_docstring():
    assert all(getattr(hookspecs, name).__doc__ for name in SPECS)
