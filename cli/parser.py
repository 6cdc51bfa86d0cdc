"""Build argparse parsers from options classes, and turn parsed values into validated options.

Options come from three places, weakest first: the architecture's defaults for core options, a
``--config_file`` TOML, and the command line. Argparse only records what was typed (its defaults are
suppressed); the options classes supply the rest, so every value passes the same validation.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from tuner_core.architecture import Architecture
from tuner_core.errors import ConfigError, PluginError
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
) -> None:
    """Add one argparse option per option field of ``cls``, grouped by the fields' ``group``.

    :param defaults: defaults an architecture gives to these options (shown in the help).
    :param notes: a sentence to add to an option's help, by option name (what is installed, what is not).
    """
    defaults, notes = defaults or {}, notes or {}
    groups: dict[str | None, Any] = {}
    for field in option_fields(cls):
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


def check_conflicts(core: type, arch_cls: type | None, arch_name: str) -> None:
    """An architecture may not redefine a core option: that would make one flag mean two things."""
    if arch_cls is None:
        return
    core_names = {f.name for f in option_fields(core)}
    clash = sorted(core_names & {f.name for f in option_fields(arch_cls)})
    if clash:
        raise PluginError(
            f"architecture {arch_name!r} defines options that the core already has: "
            + ", ".join("--" + c for c in clash)
        )


def split_values(
    values: Mapping[str, Any], core: type, arch_cls: type | None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split a flat ``{option: value}`` mapping into core and architecture parts."""
    core_names = {f.name for f in option_fields(core)}
    core_part = {k: v for k, v in values.items() if k in core_names}
    arch_part = {k: v for k, v in values.items() if k not in core_names}
    if arch_cls is None and arch_part:
        name = sorted(arch_part)[0]
        raise ConfigError(f"unknown option --{name}.{did_you_mean(name, sorted(core_names))}")
    return core_part, arch_part


def build_command_options(
    command: str,
    core: type,
    architecture: Architecture,
    typed: Mapping[str, Any],
    file_values: Mapping[str, Any],
    file_name: str | None,
) -> tuple[Any, Any]:
    """Validate the values of one command into ``(core options, architecture options)``.

    :param typed: values given on the command line.
    :param file_values: values from ``--config_file`` (validated against ``file_name`` first).
    """
    arch_cls = architecture.options.get(command)
    fields = {f.name: f for f in option_fields(core)}
    if arch_cls is not None:
        fields.update({f.name: f for f in option_fields(arch_cls)})
    merged = dict(architecture.option_defaults.get(command, {}))
    for key, raw in file_values.items():  # TOML values carry their types: "2" is not a number there
        merged[key] = check_value(fields[key], raw, source=str(file_name), label=lambda n: f"option {n!r}")
    for key, raw in typed.items():  # the command line is text: "2" is a number there
        field = fields.get(key)
        merged[key] = check_value(field, raw, source="command line", from_text=True) if field else raw
    core_part, arch_part = split_values(merged, core, arch_cls)
    source = "command line" + (f" / {file_name}" if file_values else "")
    core_options = build_options(core, core_part, source=source)
    arch_options = build_options(arch_cls, arch_part, source=source) if arch_cls is not None else None
    return core_options, arch_options
