"""Find and load the two tokenizers: LLaMA-3's (``tokenizer/``) and CLIP's (``tokenizer_2/``).

Looked up in this order: the folder given (``--tokenizer1`` / ``--tokenizer2``); beside the weights (the
snapshot's ``tokenizer/`` or ``tokenizer_2/``, or such a folder next to a single file); the local Hugging Face
cache of the hub repository the reference downloads from; and, only when downloads are allowed, the hub.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from transformers import AutoTokenizer

from tuner_core import ModelLoadError
from tuner_framepack.encoders.prompt_template import check_template_tokens

logger = logging.getLogger(__name__)

#: The hub repository whose tokenizers the reference loads.
TOKENIZER_REPO = "hunyuanvideo-community/HunyuanVideo"
LLAMA_TOKENIZER_SUBFOLDER = "tokenizer"
CLIP_TOKENIZER_SUBFOLDER = "tokenizer_2"
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json")


def _is_tokenizer_dir(folder: Path) -> bool:
    return folder.is_dir() and any((folder / name).is_file() for name in _TOKENIZER_FILES)


def tokenizer_candidates(weights_path: Path, subfolder: str) -> list[Path]:
    """Folders beside the weights where the tokenizer may be, nearest first."""
    weights_path = Path(weights_path).expanduser()
    if weights_path.is_dir():
        roots = [weights_path, weights_path.parent]
        snapshots = weights_path / "snapshots"
        if snapshots.is_dir():
            roots += sorted(p for p in snapshots.iterdir() if p.is_dir())
    else:
        roots = [weights_path.parent, weights_path.parent.parent]
    return [root / subfolder for root in roots]


def _load(source: str | Path, what: str, **kwargs: Any) -> Any:
    try:
        return AutoTokenizer.from_pretrained(str(source), **kwargs)
    except (OSError, ValueError, TypeError) as exc:
        raise ModelLoadError(f"{what}: cannot load a tokenizer from {source} ({exc}).") from None


def load_tokenizer(
    explicit: Path | None,
    weights_path: Path,
    *,
    subfolder: str,
    option: str,
    allow_download: bool = False,
    hub_cache_dir: Path | None = None,
) -> Any:
    """The tokenizer for the encoder at ``weights_path`` (see the module docstring for the search order).

    Raises :class:`ModelLoadError` saying where to put the files when none is found.
    """
    if explicit is not None:
        explicit = Path(explicit).expanduser()
        if not _is_tokenizer_dir(explicit):
            raise ModelLoadError(
                f"{option} {explicit}: not a tokenizer folder (it needs one of {', '.join(_TOKENIZER_FILES)})."
            )
        return _load(explicit, option)
    looked = tokenizer_candidates(weights_path, subfolder)
    for folder in looked:
        if _is_tokenizer_dir(folder):
            logger.info("using the tokenizer in %s", folder)
            return _load(folder, option)
    try:  # the hub cache (e.g. from an official FramePack install) works offline
        return AutoTokenizer.from_pretrained(
            TOKENIZER_REPO,
            subfolder=subfolder,
            cache_dir=str(hub_cache_dir) if hub_cache_dir else None,
            local_files_only=not allow_download,
        )
    except (OSError, ValueError) as exc:
        logger.debug("No %s/%s tokenizer from the hub cache: %s", TOKENIZER_REPO, subfolder, exc)
    raise ModelLoadError(
        f"No tokenizer for {weights_path}: looked in {', '.join(str(p) for p in looked)} and the local "
        f"Hugging Face cache of {TOKENIZER_REPO}. Put the files of {TOKENIZER_REPO}'s '{subfolder}/' folder "
        f"in a directory and pass it as {option}, or place that '{subfolder}/' folder beside the weights."
    )


def load_tokenizer1(
    explicit: Path | None,
    text_encoder1: Path,
    *,
    allow_download: bool = False,
    hub_cache_dir: Path | None = None,
) -> Any:
    """The LLaMA-3 tokenizer; checks it knows the prompt template's special tokens."""
    tokenizer = load_tokenizer(
        explicit,
        text_encoder1,
        subfolder=LLAMA_TOKENIZER_SUBFOLDER,
        option="--tokenizer1",
        allow_download=allow_download,
        hub_cache_dir=hub_cache_dir,
    )
    check_template_tokens(tokenizer, f"LLaMA tokenizer for {text_encoder1}")
    return tokenizer


def load_tokenizer2(
    explicit: Path | None,
    text_encoder2: Path,
    *,
    allow_download: bool = False,
    hub_cache_dir: Path | None = None,
) -> Any:
    """The CLIP-L tokenizer."""
    return load_tokenizer(
        explicit,
        text_encoder2,
        subfolder=CLIP_TOKENIZER_SUBFOLDER,
        option="--tokenizer2",
        allow_download=allow_download,
        hub_cache_dir=hub_cache_dir,
    )
