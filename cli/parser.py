"""Build argparse parsers from options classes, and turn parsed values into validated options.

Options come from three places, weakest first: the architecture's defaults for core options, a
``--config_file`` TOML, and the command line. Argparse only records what was typed (its defaults are
suppressed); the options classes supply the rest, so every value passes the same validation.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from tuner_core.architecture import Architecture
from tuner_core.commands import options_class
from tuner_core.errors import ConfigError
from tuner_core.memory.strategy import MemoryStrategy
from tuner_core.options import (
    build_options,
    check_value,
    did_you_mean,
    meta,
    option_fields,
    sequence_item_type,
    unwrap_optional,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def _default_text(field: attrs.Attribute, override: Any = attrs.NOTHING) -> str:
    if override is not attrs.NOTHING:
        value = override
    elif isinstance(field.default, attrs.Factory):  # type: ignore[arg-type]
        value = field.default.factory()
    else:
        value = field.default
    if value is attrs.NOTHING:
        return " (required)"
    if value in (None, False, [], ()):
        return ""
    if isinstance(value, (list, tuple)):
        value = " ".join(str(v) for v in value)
    return f" (default: {value})"


def _metavar(tp: Any, choices: Sequence[Any] | None) -> str:
    if choices:
        return "{" + ",".join(str(c) for c in choices) + "}"
    item = sequence_item_type(tp)
    tp = item if item is not None else tp
    return {int: "N", float: "X", Path: "PATH"}.get(tp, "TEXT")


def add_options(
    parser: argparse.ArgumentParser,
    cls: type,
    *,
    title: str | None = None,
    defaults: Mapping[str, Any] | None = None,
    notes: Mapping[str, str] | None = None,
    only: set[str] | None = None,
) -> None:
    """Add one argparse option per option field of ``cls``, grouped by the fields' ``group``.

    :param defaults: defaults an architecture gives to these options (shown in the help).
    :param notes: a sentence to add to an option's help, by option name (what is installed, what is not).
    :param only: add just these options (an architecture's own, without the core's it inherits).
    """
    defaults, notes = defaults or {}, notes or {}
    groups: dict[str | None, Any] = {}
    for field in option_fields(cls):
        if only is not None and field.name not in only:
            continue
        m = meta(field)
        heading = title or (f"{m.group} options" if m.group else "options")
        if heading not in groups:
            groups[heading] = parser.add_argument_group(heading)
        kwargs: dict[str, Any] = {"dest": field.name, "default": argparse.SUPPRESS}
        inner, _ = unwrap_optional(field.type)
        help_text = m.help + _default_text(field, defaults.get(field.name, attrs.NOTHING))
        if field.name in notes:
            help_text += " " + notes[field.name]
        if inner is bool:
            kwargs["action"] = "store_true"
            if field.default is True:
                kwargs["action"] = argparse.BooleanOptionalAction
        else:
            if sequence_item_type(inner) is not None:
                kwargs["nargs"] = m.nargs or "+"
            kwargs["metavar"] = m.metavar or _metavar(inner, m.choices)
        groups[heading].add_argument(f"--{field.name}", help=help_text.replace("%", "%%"), **kwargs)


def config_file_values(path: Path, known: Sequence[str]) -> dict[str, Any]:
    """Option values from a ``--config_file`` TOML; tables are flattened, unknown keys are an error."""
    if not path.is_file():
        raise ConfigError(f"--config_file {path} does not exist")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    values: dict[str, Any] = {}

    def walk(table: Mapping[str, Any], where: str) -> None:
        for key, value in table.items():
            if isinstance(value, dict):
                walk(value, f"{where}[{key}]")
                continue
            if key not in known:
                raise ConfigError(
                    f"{path}: {where or 'top level'}: unknown option {key!r}.{did_you_mean(key, list(known))}"
                )
            values[key] = value

    walk(data, "")
    return values


def build_command_options(
    command: str,
    architecture: Architecture,
    typed: Mapping[str, Any],
    file_values: Mapping[str, Any],
    file_name: str | None,
    strategies: Iterable[MemoryStrategy] = (),
) -> Any:
    """Validate the values of one command into its one options object (see :func:`options_class`).

    :param typed: values given on the command line.
    :param file_values: values from ``--config_file`` (validated against ``file_name`` first).
    :param strategies: the installed memory strategies (``plugins.memory_strategies()``), whose own
        options the command then accepts; a strategy that declares options refuses to run with options
        built without them.
    """
    cls = options_class(command, architecture, strategies)
    fields = {f.name: f for f in option_fields(cls)}
    merged = dict(architecture.option_defaults.get(command, {}))
    sources = [(file_values, str(file_name), False), (typed, "command line", True)]
    for values, where, from_text in sources:  # TOML values carry their types; the command line is text
        for key, raw in values.items():
            if key not in fields:
                hint = did_you_mean(key, sorted(fields))
                raise ConfigError(f"{where}: unknown option {key!r} for --arch {architecture.name}.{hint}")
            label = (lambda n: f"option --{n}") if from_text else (lambda n: f"option {n!r}")
            merged[key] = check_value(fields[key], raw, source=where, label=label, from_text=from_text)
    source = "command line" + (f" / {file_name}" if file_values else "")
    return build_options(cls, merged, source=source)
