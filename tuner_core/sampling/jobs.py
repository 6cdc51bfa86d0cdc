"""Generation jobs from prompt lines: ``tuner generate --from_file`` and ``--interactive``.

Each line is one job. Its switches override the request built from the command line, field by field,
as the reference's ``apply_overrides`` does: a job inherits ``--video_size``, ``--infer_steps``,
``--seed`` and the rest unless its line sets them, and a line's ``--ci`` list replaces the command
line's control images rather than adding to them. The line's text always replaces ``--prompt``.

The grammar is the generators' (see :mod:`tuner_core.sampling.prompts`): ``--g`` is the CFG scale like
``--l``, and ``--f`` is seconds for FramePack (a base request with ``video_seconds`` set) and frames
otherwise.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import attrs

from tuner_core.errors import ConfigError
from tuner_core.sampling.prompts import GENERATE_PROMPTS, GENERATE_SECONDS_PROMPTS, PromptGrammar
from tuner_core.sampling.request import SampleRequest

log = logging.getLogger(__name__)

#: Whole lines that end interactive mode (case-insensitive), besides the end of the input.
EXIT_WORDS = ("exit", "quit")
# Ctrl+D / Ctrl+Z typed as a character: the reference treats them as the end of input, since some line
# editors hand them over instead of closing the stream.
_EOF_CHARACTERS = ("\x04", "\x1a")


def generate_grammar(base: SampleRequest) -> PromptGrammar:
    """The grammar of ``base``'s architecture's job lines: ``--f`` in seconds when ``base`` counts seconds.

    An architecture that measures length in seconds (FramePack) sets ``video_seconds`` or
    ``video_sections`` in its base request; the others count ``frames``.
    """
    if base.video_seconds is not None or base.video_sections is not None:
        return GENERATE_SECONDS_PROMPTS
    return GENERATE_PROMPTS


def apply_prompt_line(
    base: SampleRequest,
    line: str,
    *,
    grammar: PromptGrammar | None = None,
    where: str = "prompt",
    warned: set[str] | None = None,
) -> SampleRequest | None:
    """The job of one line: ``base`` with the line's prompt and switches (the line wins).

    ``None`` for blank and comment lines. ``extra`` is merged key by key, the line's keys winning.

    :param grammar: default :func:`generate_grammar` of ``base``.
    :param where: the line's place for messages (``prompts.txt:3``).
    :param warned: unknown switches already warned about (updated); ``None``: warn every time.
    :raises ConfigError: a switch with a bad value, naming ``where``.
    """
    grammar = grammar or generate_grammar(base)
    fields = grammar.overrides(line, where=where, warned=warned)
    if fields is None:
        return None
    if "extra" in fields:
        fields["extra"] = {**base.extra, **fields["extra"]}
    return attrs.evolve(base, **fields)


def read_prompt_jobs(
    path: Path, base: SampleRequest, *, grammar: PromptGrammar | None = None, option: str = "--from_file"
) -> list[SampleRequest]:
    """Every job of a ``--from_file`` file, one per prompt line, each merged onto ``base``.

    The whole file is read first (as the reference does) so that a bad line stops the command before any
    model is loaded.

    :param option: the option that named the file, for messages.
    :raises ConfigError: a missing file, one without prompts, or a bad line (naming ``path:line``).
    """
    if not path.is_file():
        raise ConfigError(f"{option} {path} does not exist")
    warned: set[str] = set()
    jobs = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        job = apply_prompt_line(base, line, grammar=grammar, where=f"{path}:{number}", warned=warned)
        if job is not None:
            jobs.append(job)
    if not jobs:
        raise ConfigError(f"{option} {path} holds no prompt")
    return jobs


def _log_message(message: str) -> None:
    log.info("%s", message)


def interactive_requests(
    base: SampleRequest,
    stream: IO[str] | None = None,
    prompt_out: Callable[[str], None] | None = None,
    *,
    grammar: PromptGrammar | None = None,
    ask: Callable[[str], None] | None = None,
) -> Iterator[SampleRequest]:
    """Jobs typed one per line, until the end of the input or a line ``exit`` / ``quit``.

    Lines are read only when the next job is asked for, so the caller generates between lines. A bad
    line is reported through ``prompt_out`` and skipped; blank and ``#`` lines are skipped. Ctrl+C while
    waiting for a line is reported and reading goes on, as in the reference.

    :param stream: where lines come from (default ``sys.stdin``).
    :param prompt_out: receives the messages for the user (greeting, errors); default: the log.
    :param grammar: default :func:`generate_grammar` of ``base``.
    :param ask: called with ``"> "`` before each line is read, to show a prompt marker (the CLI passes
        ``lambda s: print(s, end="", flush=True)``); default: none.
    """
    stream = sys.stdin if stream is None else stream
    say = prompt_out or _log_message
    name = getattr(stream, "name", None) or "<stdin>"
    warned: set[str] = set()
    say(
        "Interactive mode: type a prompt with optional switches (--w, --h, --f, --s, --d, ...); an empty "
        "input (Ctrl+D, or Ctrl+Z on Windows), 'exit' or 'quit' ends it."
    )
    number = 0
    while True:
        if ask is not None:
            ask("> ")
        try:
            line = stream.readline()
        except KeyboardInterrupt:
            say("Interrupted. Ctrl+D, 'exit' or 'quit' ends interactive mode.")
            continue
        number += 1
        text = line.strip()
        if not line or text in _EOF_CHARACTERS or text.lower() in EXIT_WORDS:
            break
        try:
            job = apply_prompt_line(base, text, grammar=grammar, where=f"{name}:{number}", warned=warned)
        except ConfigError as exc:
            say(f"{exc} (line skipped)")
            continue
        if job is not None:
            yield job
    say("Leaving interactive mode.")
