"""Section-specific prompts and images: ``"0:text;;;-1:text;;;1-2:text"``, parsed as the reference does.

Grammar (musubi-tuner ``parse_section_strings``), for ``--prompt`` and ``--image_path`` alike:

* Without ``;;;`` the whole string, unchanged (not stripped, colons not read), is section 0's.
* With ``;;;`` each piece is ``INDEX:text`` or plain ``text`` (which means index 0). INDEX is ``N``,
  ``-N`` or a range ``A-B`` (both ends included; ``A`` may be negative, ``-1-2`` is -1, 0, 1, 2). The
  index and the text are stripped; only the first colon separates them, so text may contain colons.
  A later piece overrides an earlier one for the same index.
* A non-negative index is the section's time index (0 = the first section of the video); a negative one
  counts from the end (-1 = the last section in time).
* When no piece names index 0, index 0 takes the text of the smallest non-negative index, or of the
  smallest (most negative) index when all are negative. Index 0 is also every unnamed section's fallback.

Lookup for a section (:func:`section_key`): its from-the-end index if given, else its time index, else 0.

Strings the reference accepts but misreads are rejected here with a :class:`ConfigError`: an empty piece
(a stray ``;;;``, which the reference turns into an empty section 0), a piece whose text before the
first colon is not an index (the reference drops that text and uses the rest for section 0, which breaks
``C:\\...`` paths), and an empty range such as ``2-1`` (which the reference silently ignores).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from tuner_core import ConfigError

#: Separator between section pieces.
SECTION_SEPARATOR = ";;;"
_INDEX = re.compile(r"^(-?\d+)(-\d+)?$")


def parse_section_strings(text: str | None, *, option: str = "--prompt") -> dict[int, str]:
    """Map section index -> text for a section-specific ``--prompt`` / ``--image_path`` string.

    ``None`` gives ``{}`` (no value; the caller decides the default). See the module for the grammar.

    :raises ConfigError: a piece the reference would misread; the message names ``option`` and the fix.
    """
    if text is None:
        return {}
    if SECTION_SEPARATOR not in text:
        return {0: text}
    sections: dict[int, str] = {}
    for piece in text.split(SECTION_SEPARATOR):
        for index in _piece_indices(piece, text, option):
            sections[index] = _piece_text(piece)
    if not sections:
        return sections
    if 0 not in sections:
        indices = list(sections)
        fallback = min(indices) if all(i < 0 for i in indices) else min(i for i in indices if i >= 0)
        sections[0] = sections[fallback]
    return sections


def _piece_indices(piece: str, text: str, option: str) -> range:
    """The indices one ``;;;`` piece assigns (index 0 for a piece without a colon)."""
    if not piece.strip():
        raise ConfigError(
            f"{option} {text!r} has an empty section between or after {SECTION_SEPARATOR!r}; "
            f"remove the extra {SECTION_SEPARATOR!r}"
        )
    if ":" not in piece:
        return range(0, 1)
    index_text = piece.split(":", 1)[0].strip()
    match = _INDEX.match(index_text)
    if match is None:
        raise ConfigError(
            f"{option}: {index_text!r} before the colon in {piece.strip()!r} is not a section index "
            f"(N, -N or A-B); write it as '0:{piece.strip()}' if the colon is part of the text"
        )
    start = int(match.group(1))
    end = int(match.group(2)[1:]) if match.group(2) is not None else start
    if end < start:
        raise ConfigError(
            f"{option}: the section range {index_text!r} is empty; write the lower index first ({end}-{start})"
        )
    return range(start, end + 1)


def _piece_text(piece: str) -> str:
    """The stripped text of a piece, after its index when it has one."""
    if ":" not in piece:
        return piece.strip()
    return piece.split(":", 1)[1].strip()


def section_key(keys: Iterable[int], section_index: int, sections: int) -> int:
    """The key whose prompt/image a section uses: from-the-end index, else time index, else 0.

    :param keys: the indices parsed by :func:`parse_section_strings`.
    :param section_index: the section's time index (0 = first in time).
    :param sections: the number of sections, which fixes the from-the-end index ``section_index - S``.
    """
    keys = set(keys)
    from_last = section_index - sections
    if from_last in keys:
        return from_last
    if section_index in keys:
        return section_index
    return 0


def unused_section_keys(keys: Iterable[int], sections: int) -> list[int]:
    """Indices that name no section of an S-section video (the reference ignores them silently)."""
    return sorted(k for k in set(keys) if not -sections <= k < sections)
