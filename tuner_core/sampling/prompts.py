"""Prompt lines with inline switches, in the reference tool's (musubi-tuner's) grammar.

A line is a prompt followed by switches, each `` --key value``::

    a cat walks --w 512 --h 320 --f 37 --d 42 --s 25 --g 10.0 --n blurry --i start.png

Blank lines and lines starting with ``#`` are skipped. The line is cut at every `` --``, as the
reference does, so a prompt cannot contain that sequence. The same switch given twice keeps the last
value, except the repeatable ones (``--ci``, ``--cim``), which collect every value in order.

The reference has two parsers that disagree on some switches, so there are grammars:

- :data:`TRAINING_PROMPTS`, ``--sample_prompts`` (``training/sampling_prompts.py line_to_prompt_dict``):
  ``--f`` is a frame count, ``--g`` the embedded (distilled) guidance and ``--l`` the CFG scale;
- :data:`GENERATE_SECONDS_PROMPTS`, FramePack's ``--from_file`` / ``--interactive``
  (``fpack_generate_video.py parse_prompt_line``): ``--f`` is the video length in **seconds** and
  ``--g`` is the CFG scale, the same as ``--l`` (there is no switch for the embedded guidance);
- :data:`GENERATE_PROMPTS`, the same for generators that count frames (the reference's Wan and
  HunyuanVideo 1.5 scripts): ``--f`` is a frame count.

Where the reference silently ignores what it cannot parse, tuner is stricter: a bad value is a
:class:`~tuner_core.errors.ConfigError` naming the file and line, and an unknown switch is kept in
:attr:`SampleRequest.extra` with a warning (once per switch and file).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import attrs

from tuner_core.errors import ConfigError
from tuner_core.sampling.request import SampleRequest
from tuner_core.seeds import MAX_SEED

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

log = logging.getLogger(__name__)

#: The reference clamps the sample steps of training prompts to this.
MAX_TRAINING_STEPS = 1000
#: Prefix of a :class:`Switch` field that goes into :attr:`SampleRequest.extra` under the rest of the name.
EXTRA = "extra:"


def _positive_int(text: str) -> int:
    number = int(text)
    if number < 1:
        raise ValueError(text)
    return number


def _multiple_of_8(text: str) -> int:
    # The generators reject other sizes (check_inputs); failing at the line beats failing mid-batch.
    number = _positive_int(text)
    if number % 8:
        raise ValueError(text)
    return number


def _training_steps(text: str) -> int:
    return min(_positive_int(text), MAX_TRAINING_STEPS)


def _seed(text: str) -> int:
    number = int(text)
    if not 0 <= number <= MAX_SEED:
        raise ValueError(text)
    return number


def _number(text: str) -> float:
    number = float(text)
    if not math.isfinite(number) or number < 0:
        raise ValueError(text)
    return number


def _positive_number(text: str) -> float:
    number = _number(text)
    if number <= 0:
        raise ValueError(text)
    return number


def _text(text: str) -> str:
    return text


def _nonempty(text: str) -> str:
    if not text:
        raise ValueError(text)
    return text


def _path(text: str) -> Path:
    return Path(_nonempty(text))


@attrs.frozen
class Switch:
    """One inline switch: where its value goes and how it is read.

    :param field: the :class:`SampleRequest` field it sets, or ``"extra:<key>"`` for ``extra[key]``.
    :param parse: turns the text after the switch into the value; raises ``ValueError`` for a bad one.
    :param expects: what a good value is, for the error message ("a positive integer").
    :param repeat: every occurrence is kept, in order, as a tuple (``--ci``).
    :param reference_key: the key of the reference's prompt dictionaries (``.toml`` / ``.json`` files).
    """

    field: str
    parse: Callable[[str], Any]
    expects: str
    repeat: bool = False
    reference_key: str | None = None


_W = Switch("width", _positive_int, "a positive integer (pixels)", reference_key="width")
_H = Switch("height", _positive_int, "a positive integer (pixels)", reference_key="height")
_SIZE_8 = "a positive multiple of 8 (pixels)"
_D = Switch("seed", _seed, "a number: an integer from 0 to 2**64 - 1", reference_key="seed")
_L = Switch("cfg_scale", _number, "a non-negative number", reference_key="cfg_scale")
_N = Switch("negative_prompt", _text, "text", reference_key="negative_prompt")
_I = Switch("image_path", _path, "an image path", reference_key="image_path")
_EI = Switch("end_image_path", _path, "an image path", reference_key="end_image_path")
_CI = Switch("control_paths", _path, "an image path", repeat=True, reference_key="control_image_path")
_OF = Switch("one_frame", _nonempty, "one-frame options (target_index=1,no_2x)", reference_key="one_frame")
_FS = Switch("flow_shift", _positive_number, "a positive number", reference_key="discrete_flow_shift")
_FRAMES = Switch("frames", _positive_int, "a positive integer (frames)", reference_key="frame_count")

_TRAINING: dict[str, Switch] = {
    "w": _W,
    "h": _H,
    "f": _FRAMES,
    "d": _D,
    "s": Switch("steps", _training_steps, "a positive integer", reference_key="sample_steps"),
    "g": Switch("guidance", _number, "a non-negative number", reference_key="guidance_scale"),
    "l": _L,
    "fs": _FS,
    "n": _N,
    "i": _I,
    "ei": _EI,
    "cn": Switch("control_video_path", _path, "a video path", reference_key="control_video_path"),
    "ci": _CI,
    "of": _OF,
}

_GENERATE: dict[str, Switch] = {
    "w": attrs.evolve(_W, parse=_multiple_of_8, expects=_SIZE_8),
    "h": attrs.evolve(_H, parse=_multiple_of_8, expects=_SIZE_8),
    "f": _FRAMES,
    "d": _D,
    "s": Switch("steps", _positive_int, "a positive integer"),
    "g": _L,  # the generators map --g to the CFG scale too, not to the embedded guidance
    "l": _L,
    "fs": _FS,
    "n": _N,
    "i": _I,
    "vs": Switch("video_sections", _positive_int, "a positive integer (sections)"),
    "ei": _EI,
    "ci": _CI,
    "cim": Switch("control_mask_paths", _path, "an image path", repeat=True),
    "of": _OF,
    "mcrr": Switch(EXTRA + "magcache_retention_ratio", _number, "a non-negative number"),
    "mct": Switch(EXTRA + "magcache_threshold", _number, "a non-negative number"),
    "mck": Switch(EXTRA + "magcache_k", _positive_int, "a positive integer"),
}


@attrs.frozen
class PromptGrammar:
    """The switches one of the reference's prompt-line parsers knows.

    :param name: what the lines are for, in messages ("training prompt").
    :param switches: switch name (without ``--``, lower case) to what it sets.
    """

    name: str
    switches: Mapping[str, Switch]

    def overrides(
        self, line: str, *, where: str = "prompt", warned: set[str] | None = None
    ) -> dict[str, Any] | None:
        """The fields a line sets, ready for ``attrs.evolve`` / ``SampleRequest(**...)``.

        ``None`` for a blank or comment line. The prompt is always set; ``extra`` only when the line has
        unknown or architecture-specific switches.

        :param where: the line's place for messages (``prompts.txt:3``).
        :param warned: switches already warned about in this file or session (updated); ``None``: warn.
        :raises ConfigError: a switch with a bad value.
        """
        line = line.strip()
        if not line or line.startswith("#"):
            return None
        # The leading space lets a line that starts with a switch (no prompt) split the same way.
        prompt, *parts = (" " + line).split(" --")
        fields: dict[str, Any] = {"prompt": prompt.strip()}
        repeated: dict[str, list[Any]] = {}
        extra: dict[str, Any] = {}
        for part in parts:
            pieces = part.split(None, 1)
            if not pieces:
                continue  # a stray " --"; the reference skips it too
            key, value = pieces[0].lower(), pieces[1].strip() if len(pieces) > 1 else ""
            switch = self.switches.get(key)
            if switch is None:
                self._unknown(key, where, warned)
                extra[key] = value
                continue
            parsed = _parse_value(switch, key, value, where)
            if switch.repeat:
                repeated.setdefault(switch.field, []).append(parsed)
            elif switch.field.startswith(EXTRA):
                extra[switch.field.removeprefix(EXTRA)] = parsed
            else:
                fields[switch.field] = parsed
        fields.update({name: tuple(values) for name, values in repeated.items()})
        if extra:
            fields["extra"] = extra
        return fields

    def _unknown(self, key: str, where: str, warned: set[str] | None) -> None:
        if warned is not None:
            if key in warned:
                return
            warned.add(key)
        elsewhere = [g.name for g in _GRAMMARS if g is not self and key in g.switches]
        hint = f" (it is one in {elsewhere[0]} lines)" if elsewhere else ""
        log.warning(
            "%s: --%s is not a %s switch%s; the reference ignores it, tuner passes it to the "
            "architecture as extra[%r]",
            where,
            key,
            self.name,
            hint,
            key,
        )


def _parse_value(switch: Switch, key: str, value: str, where: str) -> Any:
    try:
        return switch.parse(value)
    except ValueError:
        got = repr(value) if value else "nothing"
        raise ConfigError(f"{where}: --{key} expects {switch.expects}, got {got}") from None


#: ``--sample_prompts`` lines (the reference's ``line_to_prompt_dict``).
TRAINING_PROMPTS = PromptGrammar("training prompt", _TRAINING)
#: ``tuner generate --from_file / --interactive`` lines of frame-counting architectures.
GENERATE_PROMPTS = PromptGrammar("generate prompt", _GENERATE)
#: The same for FramePack, whose ``--f`` is the video length in seconds.
GENERATE_SECONDS_PROMPTS = PromptGrammar(
    "FramePack generate prompt",
    {**_GENERATE, "f": Switch("video_seconds", _positive_number, "a positive number (seconds)")},
)
_GRAMMARS = (TRAINING_PROMPTS, GENERATE_PROMPTS, GENERATE_SECONDS_PROMPTS)


def parse_prompt_line(
    line: str,
    *,
    where: str = "prompt",
    grammar: PromptGrammar = TRAINING_PROMPTS,
    warned: set[str] | None = None,
) -> SampleRequest | None:
    """One :class:`SampleRequest` from a prompt line, the unset fields at their defaults.

    ``None`` for blank and comment lines. To start from other defaults (a command line's), use
    :func:`tuner_core.sampling.jobs.apply_prompt_line`.

    :raises ConfigError: a switch with a bad value, naming ``where``.
    """
    fields = grammar.overrides(line, where=where, warned=warned)
    return None if fields is None else SampleRequest(**fields)


def read_prompt_file(path: Path, *, option: str = "--sample_prompts") -> list[SampleRequest]:
    """Every request of a training prompt file (``--sample_prompts``), in the reference's formats.

    Anything but ``.toml`` and ``.json`` is text, one prompt line each. TOML: a ``[prompt]`` table of
    defaults with one ``[[prompt.subset]]`` table per prompt. JSON: a list of prompt lines or tables.
    The tables' keys are the reference's (``frame_count``, ``sample_steps``, ``guidance_scale``,
    ``control_image_path`` ..., one per training switch), checked like the switches.

    :param option: the option that named the file, for messages.
    :raises ConfigError: a missing or empty file, or a bad line / entry (naming it).
    """
    if not path.is_file():
        raise ConfigError(f"{option} {path} does not exist")
    warned: set[str] = set()
    if path.suffix.lower() in (".toml", ".json"):
        requests = _read_structured(path, option, warned)
    else:
        requests = []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            request = parse_prompt_line(line, where=f"{path}:{number}", warned=warned)
            if request is not None:
                requests.append(request)
    if not requests:
        raise ConfigError(f"{option} {path} holds no prompt")
    return requests


def _read_structured(path: Path, option: str, warned: set[str]) -> list[SampleRequest]:
    """The reference's ``load_prompts`` for ``.toml`` and ``.json`` files.

    TOML: a ``[prompt]`` table of defaults with one ``[[prompt.subset]]`` table per prompt (a subset's
    keys win; the reference fails on a key given in both). JSON: a list whose items are prompt lines or
    dictionaries. The keys are the reference's: ``prompt``, ``negative_prompt``, ``width``, ``height``,
    ``frame_count``, ``seed``, ``sample_steps``, ``guidance_scale``, ``discrete_flow_shift``,
    ``cfg_scale``, ``image_path``, ``end_image_path``, ``control_video_path``, ``control_image_path``
    (a list), ``one_frame``.
    """
    text = path.read_text(encoding="utf-8")
    try:
        data = tomllib.loads(text) if path.suffix.lower() == ".toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{option} {path}: cannot be read ({exc})") from exc
    if isinstance(data, dict):
        table = data.get("prompt")
        subsets = table.get("subset") if isinstance(table, dict) else None
        if not isinstance(subsets, list) or not all(isinstance(s, dict) for s in subsets):
            raise ConfigError(f"{option} {path}: expects a [prompt] table with [[prompt.subset]] tables")
        defaults = {k: v for k, v in table.items() if k != "subset"}
        entries: list[Any] = [{**defaults, **subset} for subset in subsets]
    elif isinstance(data, list):
        entries = data
    else:
        raise ConfigError(f"{option} {path}: expects a list of prompts")
    requests = []
    for index, entry in enumerate(entries, start=1):
        where = f"{path}: prompt {index}"
        if isinstance(entry, str):
            request = parse_prompt_line(entry, where=where, warned=warned)
        elif isinstance(entry, dict):
            request = _from_reference_dict(entry, where, warned)
        else:
            raise ConfigError(f"{where}: expects a prompt line or a table, got {entry!r}")
        if request is not None:
            requests.append(request)
    return requests


_BY_REFERENCE_KEY = {s.reference_key: (k, s) for k, s in _TRAINING.items() if s.reference_key}
_IGNORED_KEYS = ("enum", "subset")  # the reference's own bookkeeping


def _from_reference_dict(entry: Mapping[str, Any], where: str, warned: set[str]) -> SampleRequest:
    """A request from one of the reference's prompt dictionaries (values checked like switches)."""
    prompt = entry.get("prompt", "")
    if not isinstance(prompt, str):
        raise ConfigError(f"{where}: prompt expects text, got {prompt!r}")
    fields: dict[str, Any] = {"prompt": prompt}
    extra: dict[str, Any] = {}
    for name, value in entry.items():
        if name == "prompt" or name in _IGNORED_KEYS:
            continue
        if name not in _BY_REFERENCE_KEY:
            if name not in warned:
                warned.add(name)
                log.warning("%s: unknown key %r; tuner passes it to the architecture in extra", where, name)
            extra[name] = value
            continue
        key, switch = _BY_REFERENCE_KEY[name]
        values = value if switch.repeat and isinstance(value, list) else [value]
        parsed = [_parse_value(switch, key, _scalar_text(v, name, where), where) for v in values]
        fields[switch.field] = tuple(parsed) if switch.repeat else parsed[0]
    if extra:
        fields["extra"] = extra
    return SampleRequest(**fields)


def _scalar_text(value: Any, name: str, where: str) -> str:
    # TOML and JSON hand over numbers as numbers; reading their text reuses the switches' checks.
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ConfigError(f"{where}: {name} expects a number or text, got {value!r}")
    return str(value)


def grammar_table(grammar: PromptGrammar) -> Iterable[tuple[str, str, str]]:
    """``(switch, field, expected value)`` for each switch of ``grammar``, for help texts and docs."""
    return ((f"--{key}", s.field, s.expects) for key, s in grammar.switches.items())
