"""Typed command options: attrs fields that carry their help text, and validation of raw values.

Every option class (the core's per command, an architecture's per command) is an attrs class whose
fields are made with :func:`option`. The CLI builds its parser from these fields; a config file or an
embedding program passes a mapping to :func:`build_options`. Either way values are checked once, here.
"""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path, PureWindowsPath
from typing import Any, TypeVar

import attrs

from tuner_core.errors import ConfigError

T = TypeVar("T")
META_KEY = "tuner"


@attrs.frozen
class OptionMeta:
    """The command-line face of an option field."""

    help: str
    choices: tuple[Any, ...] | None = None
    metavar: str | None = None
    #: For list options: exact count (``2``) or ``"+"``/``"*"``.
    nargs: int | str | None = None
    #: Heading the option is listed under in ``--help``.
    group: str | None = None
    #: For path options: ``"directory"`` or ``"file"`` when tuner writes there; ``None`` for an input,
    #: which pre-flight requires to exist.
    output: str | None = None


def option(
    default: Any = attrs.NOTHING,
    *,
    help: str,
    choices: Sequence[Any] | None = None,
    metavar: str | None = None,
    nargs: int | str | None = None,
    group: str | None = None,
    validator: Callable[[Any, attrs.Attribute, Any], None] | None = None,
    factory: Callable[[], Any] | None = None,
    output: str | None = None,
) -> Any:
    """Declare one option field of an options class.

    :param default: value when the option is not given; omit it for a required option.
    :param help: one sentence for ``--help``.
    :param choices: the accepted values, checked by :func:`build_options`.
    :param nargs: for list options, how many values the command line takes.
    :param validator: an attrs validator for checks beyond type and choices; raise ``ValueError``.
    :param output: for a path tuner writes to, ``"directory"`` or ``"file"`` (checked to be writable before
        any model loads); other path options are inputs that must exist.
    """
    if output not in (None, "directory", "file"):
        raise ValueError(f"output must be None, 'directory' or 'file', got {output!r}")
    meta = OptionMeta(help, tuple(choices) if choices is not None else None, metavar, nargs, group, output)
    if factory is not None:
        return attrs.field(factory=factory, metadata={META_KEY: meta}, validator=validator)
    return attrs.field(default=default, metadata={META_KEY: meta}, validator=validator)


def option_fields(cls: type) -> list[attrs.Attribute]:
    """The option fields of an options class, with their annotations resolved to real types."""
    attrs.resolve_types(cls)
    return [f for f in attrs.fields(cls) if META_KEY in f.metadata]


def meta(field: attrs.Attribute) -> OptionMeta:
    """The :class:`OptionMeta` of an option field."""
    return field.metadata[META_KEY]


def unwrap_optional(tp: Any) -> tuple[Any, bool]:
    """``(inner type, is optional)`` for ``X | None`` / ``Optional[X]``; ``(tp, False)`` otherwise."""
    args = typing.get_args(tp)
    if (typing.get_origin(tp) in (typing.Union, types.UnionType)) and type(None) in args:
        inner = [a for a in args if a is not type(None)]
        return (inner[0] if len(inner) == 1 else typing.Union[tuple(inner)]), True  # noqa: UP007
    return tp, False


def sequence_item_type(tp: Any) -> Any | None:
    """The item type of ``list[X]`` / ``tuple[X, ...]`` / ``tuple[X, X]``, else ``None``."""
    origin = typing.get_origin(tp)
    if origin in (list, tuple, Sequence, typing.Sequence):
        args = [a for a in typing.get_args(tp) if a is not Ellipsis]
        return args[0] if args else str
    return None


def _describe(tp: Any) -> str:
    inner, optional = unwrap_optional(tp)
    item = sequence_item_type(inner)
    if item is not None:
        text = f"a list of {_describe(item)}"
    else:
        text = {
            bool: "true or false",
            int: "an integer",
            float: "a number",
            str: "a string",
            Path: "a path",
        }.get(inner, getattr(inner, "__name__", str(inner)))
    return text + (" (or nothing)" if optional else "")


def _looks_windows(text: str) -> bool:
    return len(text) >= 2 and text[1] == ":" and text[0].isalpha() or "\\" in text


def coerce_path(value: str) -> Path:
    """A path from user text; Windows-style text on a POSIX system is converted where that is unambiguous.

    ``dir\\sub\\file`` becomes ``dir/sub/file``; a drive letter (``C:\\data``) cannot mean anything here, so
    the caller's error explains it.
    """
    if _looks_windows(value) and not Path(value).exists():
        windows = PureWindowsPath(value)
        if windows.drive:
            raise ValueError(
                f"{value!r} is a Windows path with a drive letter, which does not exist on this system; "
                "give the path as this machine sees it (for example /mnt/c/... under WSL)"
            )
        return Path(*windows.parts)
    return Path(value)


def coerce(value: Any, tp: Any, *, from_text: bool = False) -> Any:
    """Convert a raw value to ``tp``; raise ``ValueError`` if it cannot be.

    :param from_text: the value was typed as text (the command line), so ``"2"`` may mean the number 2.
        Values from TOML, JSON or a program carry their own types: there a string where a number or a
        boolean belongs is refused, as it usually means quotes the user did not intend.
    """
    inner, optional = unwrap_optional(tp)
    if value is None:
        if optional:
            return None
        raise ValueError("a value is required")
    item = sequence_item_type(inner)
    if item is not None:
        values = value if isinstance(value, (list, tuple)) else [value]
        converted = [coerce(v, item, from_text=from_text) for v in values]
        return tuple(converted) if typing.get_origin(inner) is tuple else converted
    if isinstance(value, str) and not from_text and inner in (bool, int, float):
        raise ValueError(f"expected {_describe(inner)}, not the string {value!r} (remove the quotes)")
    if inner is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in {
            "true",
            "1",
            "yes",
            "on",
            "false",
            "0",
            "no",
            "off",
        }:
            return value.strip().lower() in {"true", "1", "yes", "on"}
        raise ValueError("expected true or false")
    if inner is int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError("expected an integer")
        try:
            return int(value)
        except ValueError:
            raise ValueError("expected an integer") from None
    if inner is float:
        if isinstance(value, bool):
            raise ValueError("expected a number")
        try:
            return float(value)
        except ValueError:
            raise ValueError("expected a number") from None
    if inner is str:
        if not isinstance(value, str):
            raise ValueError("expected a string")
        return value
    if inner is Path:
        if not isinstance(value, (str, Path)):
            raise ValueError("expected a path")
        return coerce_path(str(value))
    # Unions of simple types (e.g. int | float) and Any: try each member in order.
    members = typing.get_args(inner)
    if members:
        for member in members:
            try:
                return coerce(value, member, from_text=from_text)
            except (TypeError, ValueError):
                continue
        raise ValueError(f"expected {_describe(inner)}")
    return value


def did_you_mean(name: str, known: Sequence[str]) -> str:
    """`` Did you mean 'x'?`` for a misspelled name, or an empty string."""
    hint = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return f" Did you mean {hint[0]!r}?" if hint else ""


def build_options(
    cls: type[T],
    values: Mapping[str, Any],
    *,
    source: str = "options",
    label: Callable[[str], str] = lambda name: f"option --{name}",
    allow_unknown: bool = False,
    from_text: bool = False,
) -> T:
    """Validate ``values`` and build an instance of the options class ``cls``.

    :param source: where the values came from, for error messages (a file name, "command line").
    :param label: how an option name is shown in errors (``option --x`` on the command line, ``key 'x'`` in TOML).
    :param allow_unknown: ignore keys ``cls`` has no field for (used when one mapping feeds several classes).
    :param from_text: the values are command-line text (see :func:`coerce`).
    :raises ConfigError: naming the source, the option, the bad value and what is accepted.
    """
    fields = {f.name: f for f in option_fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, raw in values.items():
        field = fields.get(key)
        if field is None:
            if allow_unknown:
                continue
            raise ConfigError(f"{source}: unknown {label(key)}.{did_you_mean(key, list(fields))}")
        kwargs[key] = check_value(field, raw, source=source, label=label, from_text=from_text)
    missing = [
        name for name, f in fields.items() if name not in kwargs and f.default is attrs.NOTHING and f.init
    ]
    if missing:
        raise ConfigError(f"{source}: missing required " + ", ".join(label(n) for n in missing))
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{source}: {exc}") from exc


def check_value(
    field: attrs.Attribute,
    raw: Any,
    *,
    source: str,
    label: Callable[[str], str] = lambda name: f"option --{name}",
    from_text: bool = False,
) -> Any:
    """Coerce one raw value to its field's type and check its choices (``from_text``: see :func:`coerce`)."""
    m = meta(field)
    try:
        value = coerce(raw, field.type, from_text=from_text)
    except (TypeError, ValueError) as exc:
        raise ConfigError(
            f"{source}: {label(field.name)} got {raw!r}: {exc}; accepted: {_describe(field.type)}"
        ) from exc
    if m.choices is not None and value is not None:
        for v in value if isinstance(value, (list, tuple)) else [value]:
            if v not in m.choices:
                raise ConfigError(
                    f"{source}: {label(field.name)} got {v!r}; accepted: "
                    + ", ".join(repr(c) for c in m.choices)
                    + "."
                    + did_you_mean(str(v), [str(c) for c in m.choices])
                )
    return value


def at_least(minimum: float, *, allow_none: bool = True) -> Callable[[Any, attrs.Attribute, Any], None]:
    """An attrs validator: the value is ``>= minimum``."""

    def check(_instance: Any, attribute: attrs.Attribute, value: Any) -> None:
        if value is None and allow_none:
            return
        if value < minimum:
            raise ValueError(f"{attribute.name} must be at least {minimum}, got {value!r}")

    return check


def as_dict(instance: Any) -> dict[str, Any]:
    """Option values of an options instance, by field name."""
    return {f.name: getattr(instance, f.name) for f in option_fields(type(instance))}
