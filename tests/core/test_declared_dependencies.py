"""Every distribution declares, in its own pyproject, each third-party package its code imports.

A package that only arrives through another distribution's requirements (tqdm through the core, say) breaks
an install the day that distribution drops it. Declared but not imported is allowed (``lycoris-lora``).
"""

from __future__ import annotations

import ast
import re
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]

#: Each distribution's pyproject and its import packages with their source folders.
DISTRIBUTIONS = {
    "tuner": (ROOT / "pyproject.toml", {"tuner_core": ROOT / "tuner_core", "tuner_cli": ROOT / "cli"}),
    "tuner-framepack": (
        ROOT / "plugins" / "framepack" / "pyproject.toml",
        {"tuner_framepack": ROOT / "plugins" / "framepack" / "tuner_framepack"},
    ),
    "tuner-lora": (
        ROOT / "plugins" / "lora" / "pyproject.toml",
        {"tuner_lora": ROOT / "plugins" / "lora" / "tuner_lora"},
    ),
    "tuner-toy": (
        ROOT / "tests" / "toy_arch" / "pyproject.toml",
        {"tuner_toy": ROOT / "tests" / "toy_arch" / "tuner_toy"},
    ),
}
#: Import name -> distribution, for the packages of this repository.
FIRST_PARTY = {module: dist for dist, (_, packages) in DISTRIBUTIONS.items() for module in packages}


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def declared(pyproject: Path) -> set[str]:
    """Normalised names of the requirements and optional requirements of ``pyproject``."""
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    requirements = list(project.get("dependencies", []))
    for extra in project.get("optional-dependencies", {}).values():
        requirements += extra
    return {_normalize(re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", r.strip()).group(0)) for r in requirements}


def imported(folders: list[Path]) -> dict[str, list[str]]:
    """``{top-level module: ["file:line", ...]}`` of every absolute import outside the standard library."""
    found: dict[str, list[str]] = {}
    for folder in folders:
        for path in sorted(folder.rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    top = name.split(".")[0]
                    if top not in sys.stdlib_module_names:
                        found.setdefault(top, []).append(f"{path.relative_to(ROOT)}:{node.lineno}")
    return found


def distributions_of(module: str) -> set[str]:
    """The distributions that install ``module`` (its own name where none installed here does, e.g. tomli)."""
    if module in FIRST_PARTY:
        return {FIRST_PARTY[module]}
    return {_normalize(d) for d in packages_distributions().get(module, [module])}


def test_every_import_is_declared_by_its_distribution():
    missing = []
    for dist, (pyproject, packages) in DISTRIBUTIONS.items():
        requirements = declared(pyproject)
        for module, places in imported(list(packages.values())).items():
            if FIRST_PARTY.get(module) == dist:
                continue
            if not distributions_of(module) & requirements:
                wanted = " or ".join(sorted(distributions_of(module)))
                missing.append(f"{dist} imports {module} ({places[0]}) but does not declare {wanted}")
    assert not missing, "\n".join(missing)


def test_the_scan_sees_imports_and_maps_them():
    core = imported([ROOT / "tuner_core"])
    assert {"torch", "tqdm", "PIL", "av"} <= set(core)
    assert "os" not in core and "__future__" not in core  # the standard library is left out
    assert distributions_of("PIL") == {"pillow"}
    assert distributions_of("tuner_core") == {"tuner"}
    assert {"tqdm", "tomli", "transformers"} <= declared(ROOT / "pyproject.toml")
