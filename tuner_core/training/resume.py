"""What a state directory records about its run, and whether a command may resume it.

A state holds the trained weights and the optimizer's moments; their shapes come from the network and the
optimizer. Resuming with another rank, network type or optimizer cannot work, and torch would only say so
with a hundred lines of ``load_state_dict`` errors after the model is loaded. So every state records the
settings that decide those shapes (``tuner_run.json``), and pre-flight compares them with the command.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tuner_core.config.train_options import TrainOptions
from tuner_core.errors import ConfigError
from tuner_core.weights.save import save_json

RUN_FILE = "tuner_run.json"
#: The seed of the run, recorded beside the settings: resuming without ``--seed`` continues with it.
SEED_KEY = "seed"
#: The file every state directory holds (the trained weights; see ``saving.py``).
TRAINABLE_FILE = "trainable.safetensors"

#: The options a state can only be resumed with unchanged, by the key they are recorded under.
MUST_MATCH: dict[str, str] = {
    "arch": "--arch",
    "network_type": "--network_module",
    "network_dim": "--network_dim",
    "network_alpha": "--network_alpha",
    "network_args": "--network_args",
    "optimizer_type": "--optimizer_type",
    "optimizer_args": "--optimizer_args",
}


def run_settings(
    arch: str, options: TrainOptions, *, network_type: str | None, network_dim: int | None
) -> dict[str, Any]:
    """The settings of :data:`MUST_MATCH` for a run (``network_type`` resolved from its alias)."""
    return {
        "arch": arch,
        "network_type": network_type,
        "network_dim": network_dim,
        "network_alpha": options.network_alpha if network_type else None,
        "network_args": list(options.network_args),
        "optimizer_type": options.optimizer_type.lower(),
        "optimizer_args": list(options.optimizer_args),
    }


def write_run_settings(state_dir: Path, settings: Mapping[str, Any]) -> None:
    """Record ``settings`` in a state directory being written."""
    save_json(dict(settings), state_dir / RUN_FILE)


def saved_seed(state_dir: Path | None) -> int | None:
    """The seed recorded in a state directory (``None`` without a state or a record)."""
    record = None if state_dir is None else state_dir / RUN_FILE
    if record is None or not record.is_file():
        return None
    seed = json.loads(record.read_text(encoding="utf-8")).get(SEED_KEY)
    return seed if isinstance(seed, int) else None


def _shown(value: Any) -> str:
    if value is None:
        return "(none)"
    if isinstance(value, list):
        return " ".join(str(v) for v in value) or "(none)"
    return str(value)


def resume_problems(state_dir: Path, expected: Mapping[str, Any]) -> list[str]:
    """Why ``state_dir`` cannot be resumed by a run with the ``expected`` settings (empty when it can).

    A setting missing from ``expected`` (``network_dim`` with ``--dim_from_weights``) is not compared.
    """
    if not state_dir.is_dir():
        return [
            f"--resume {state_dir} is a file; give a state directory (NAME-state, NAME-step00000010-state)"
        ]
    record = state_dir / RUN_FILE
    # FSDP and DeepSpeed states hold sharded weights of their own instead of TRAINABLE_FILE.
    if not record.is_file() and not (state_dir / TRAINABLE_FILE).is_file():
        return [
            f"--resume {state_dir} is not a tuner state directory (it holds no {TRAINABLE_FILE}); give a "
            "directory that --save_state wrote, such as NAME-step00000010-state"
        ]
    if not record.is_file():
        return []  # written by an older tuner: the load itself reports a mismatch
    try:
        saved = json.loads(record.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return [f"--resume {state_dir}: {RUN_FILE} cannot be read ({exc})"]
    different = [
        f"{flag} {_shown(saved.get(key))} (this command: {_shown(expected[key])})"
        for key, flag in MUST_MATCH.items()
        if key in expected and key in saved and saved[key] != expected[key]
    ]
    if not different:
        return []
    return [
        f"--resume {state_dir} was saved with " + ", ".join(different) + ". A state resumes only with the "
        "settings it was saved with (" + ", ".join(MUST_MATCH.values()) + "); give the saved values, or "
        "start a new run without --resume"
    ]


def mismatch_error(state_dir: Path, error: Exception) -> ConfigError:
    """The error for a state whose tensors do not fit the run (a state without :data:`RUN_FILE`)."""
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return ConfigError(
        f"--resume {state_dir}: the saved state does not fit the network or optimizer this command builds "
        f"({first[:200]}). Resume with the settings it was saved with: " + ", ".join(MUST_MATCH.values())
    )
