"""Opt-in logging for programs that show tuner's log lines to a person (the ``tuner`` CLI calls it).

Nothing here runs on import: library code only logs, and a program embedding tuner chooses whether to
call :func:`configure_logging` (all of the CLI's set-up) or just :func:`quiet_third_party`.

What it does, and why:

* INFO lines are plain sentences; WARNING and above read ``warning: ...``; module names appear only at
  DEBUG, where they help to find the code that logged.
* Lines are written with ``tqdm.write``, so they land above a progress bar instead of on its line.
* Third-party lines that give the user nothing to do are dropped (see :data:`QUIET_LOGGERS` and
  :data:`DROPPED_MESSAGES`). ``TUNER_LOG_LEVEL=DEBUG`` shows them again.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import TextIO

from tqdm import tqdm

#: The environment variable :func:`configure_logging` reads its level from (default INFO).
LOG_LEVEL_ENV = "TUNER_LOG_LEVEL"

#: Libraries whose INFO lines narrate internals; lowered to WARNING. accelerate logs one line per file on
#: every ``save_state`` / ``load_state``; tuner logs its own "saved state ..." / "resumed from ..." lines.
QUIET_LOGGERS = ("accelerate",)

#: (logger, message start) of third-party warnings that carry no action for the user. bitsandbytes warns
#: on import (diffusers' quantizers import it) that an optional CPU kernel package is missing, although
#: tuner never runs 4-bit CPU matmuls.
DROPPED_MESSAGES = (
    ("bitsandbytes.backends.cpu.ops", "Failed to load CPU gemm_4bit_forward from kernels-community"),
)


class _DropMessages(logging.Filter):
    """Drops records whose message template starts with one of ``prefixes``; everything else passes."""

    def __init__(self, prefixes: tuple[str, ...]) -> None:
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefixes)


def _drop_filters() -> dict[str, _DropMessages]:
    by_logger: dict[str, list[str]] = {}
    for name, prefix in DROPPED_MESSAGES:
        by_logger.setdefault(name, []).append(prefix)
    return {name: _DropMessages(tuple(prefixes)) for name, prefixes in by_logger.items()}


#: One filter per logger, kept so repeated calls neither stack filters nor lose track of them.
_FILTERS = _drop_filters()


def quiet_third_party(quiet: bool = True) -> None:
    """Silence third-party log lines that carry no action for the user (``quiet=False`` undoes it).

    Lowers :data:`QUIET_LOGGERS` to WARNING and drops :data:`DROPPED_MESSAGES`. Safe to call again; call
    it before the libraries are imported, since bitsandbytes warns at import time. Real warnings and
    errors of those libraries still pass.
    """
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING if quiet else logging.NOTSET)
    for name, drop in _FILTERS.items():
        logger = logging.getLogger(name)
        if quiet and drop not in logger.filters:
            logger.addFilter(drop)
        elif not quiet:
            logger.removeFilter(drop)


class TqdmHandler(logging.Handler):
    """Writes records with ``tqdm.write``: an active progress bar is cleared, the line printed, the bar
    redrawn below it. The stream defaults to the ``sys.stderr`` of the moment a record is written."""

    def __init__(self, stream: TextIO | None = None, level: int = logging.NOTSET) -> None:
        super().__init__(level)
        self.stream = stream

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=self.stream or sys.stderr)
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)


class PlainFormatter(logging.Formatter):
    """INFO and below as the bare message; WARNING and above prefixed ``warning: `` / ``error: ``."""

    def format(self, record: logging.LogRecord) -> str:
        message = super().format(record)
        if record.levelno >= logging.WARNING:
            return f"{record.levelname.lower()}: {message}"
        return message


#: The format at DEBUG: module names say where a line comes from.
DEBUG_FORMAT = "%(levelname)s %(name)s: %(message)s"


def parse_level(level: str | int | None) -> int | None:
    """The numeric logging level ``level`` names (``"info"``, ``"DEBUG"``, ``20``), or ``None`` if unknown."""
    if isinstance(level, int):
        return level
    if level is None:
        return None
    name = level.strip().upper()
    if name.isdigit():
        return int(name)
    value = logging.getLevelName(name)
    return value if isinstance(value, int) else None


def configure_logging(level: str | int | None = None, *, stream: TextIO | None = None) -> int:
    """Set up the root logger the way the ``tuner`` CLI shows log lines; returns the level used.

    ``level`` defaults to ``$TUNER_LOG_LEVEL``, else INFO; an unknown name falls back to INFO with a
    warning. Above DEBUG, lines are plain sentences and :func:`quiet_third_party` applies; at DEBUG every
    line shows its level and logger name, and nothing is silenced. Lines go through :class:`TqdmHandler`
    to ``stream`` (default: the current ``sys.stderr``). Calling it again replaces the handler it added
    and leaves other handlers alone.
    """
    requested = level if level is not None else os.environ.get(LOG_LEVEL_ENV) or "INFO"
    numeric = parse_level(requested)
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, TqdmHandler)]:
        root.removeHandler(old)
    handler = TqdmHandler(stream)
    verbose = numeric is not None and numeric <= logging.DEBUG
    handler.setFormatter(logging.Formatter(DEBUG_FORMAT) if verbose else PlainFormatter())
    root.addHandler(handler)
    root.setLevel(numeric if numeric is not None else logging.INFO)
    quiet_third_party(not verbose)
    if numeric is None:
        source = f"{LOG_LEVEL_ENV}={requested}" if level is None else f"log level {requested}"
        logging.getLogger("tuner").warning("%s is not one of DEBUG, INFO, WARNING, ERROR; using INFO", source)
    return root.level
