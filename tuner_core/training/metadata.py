"""Metadata written into saved network files: the reference tool's ``ss_*`` keys, its ``sshs_*`` hashes and
SAI model-spec keys.

As in the reference (musubi-tuner's ``trainer_base`` and ``utils/model_utils.py``):

- every key of the training record is written, a value that was not set as ``"None"``;
- ``ss_network_module`` is ``--network_module`` as given, ``ss_network_args`` the ``key=value`` strings;
- ``ss_sd_model_name`` and ``ss_vae_name`` are the model files' base names, never a path of the user's
  machine (a shared LoRA must not say where its author keeps files);
- ``sshs_model_hash`` is the sha256 of the tensor data after the header, ``sshs_legacy_hash`` the first 8
  hex digits of the sha256 of the 64 KiB at offset 1 MiB of the file *including its header*, both of the
  file as it would be written with only the ``ss_*`` keys as metadata (what sd-webui's additional-networks
  extension computes). Because the header sits in front of the data, the legacy hash depends on the length
  of that metadata: hashing a serialization without it gives a different value once the file is over 1 MiB.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePath
from typing import Any

import torch
from safetensors.torch import save

from tuner_core.architecture import Architecture
from tuner_core.training.saved_files import SAVE_DTYPES

#: Keys ``--no_metadata`` keeps (with the ``modelspec.*`` keys and the hashes), as the reference does.
MINIMUM_KEYS = (
    "ss_base_model_version",
    "ss_network_module",
    "ss_network_dim",
    "ss_network_alpha",
    "ss_network_args",
)
#: The legacy ("addnet") hash reads this many bytes at this offset of the file.
LEGACY_OFFSET, LEGACY_LENGTH = 0x100000, 0x10000


def model_hashes(
    tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None
) -> tuple[str, str]:
    """``(sshs_model_hash, sshs_legacy_hash)`` of a network file with ``tensors`` and ``metadata``.

    Only the ``ss_*`` keys of ``metadata`` count (other keys may be edited later without changing the
    hashes); ``tensors`` must be what is saved (already cast to the save precision).
    """
    kept = {k: v for k, v in (metadata or {}).items() if k.startswith("ss_")}
    payload = save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, kept)
    header = int.from_bytes(payload[:8], "little")
    full = hashlib.sha256(payload[8 + header :]).hexdigest()
    legacy = hashlib.sha256(payload[LEGACY_OFFSET : LEGACY_OFFSET + LEGACY_LENGTH]).hexdigest()[:8]
    return full, legacy


def with_hashes(
    metadata: Mapping[str, str], tensors: Mapping[str, torch.Tensor], precision: str | None
) -> dict[str, str]:
    """``metadata`` plus ``sshs_model_hash`` / ``sshs_legacy_hash`` of ``tensors`` as
    :func:`~tuner_core.training.saved_files.save_weights` writes them at ``precision`` (fp32 when ``None``)."""
    dtype = SAVE_DTYPES[precision or "fp32"]
    cast = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in tensors.items()}
    model_hash, legacy_hash = model_hashes(cast, metadata)
    return {**metadata, "sshs_model_hash": model_hash, "sshs_legacy_hash": legacy_hash}


def file_name(path: str | PurePath | None) -> str | None:
    """The base name of a model path (``None`` if none was given), whichever separator the path uses; a
    directory (a snapshot) gives its own name."""
    if path is None or str(path) == "":
        return None
    return str(path).replace("\\", "/").rstrip("/").rsplit("/", 1)[-1] or str(path)


def _network_args(raw: Sequence[str] | None) -> str | None:
    """``ss_network_args``: the ``key=value`` strings as a JSON object of strings (``None``: none given)."""
    if not raw:
        return None
    return json.dumps(dict(arg.split("=", 1) if "=" in arg else (arg, "") for arg in raw))


def _record(options: Any, **values: Any) -> dict[str, Any]:
    """The training record's keys, in the reference's order."""
    return {
        "ss_session_id": values["session_id"],
        "ss_training_started_at": values["started_at"],
        "ss_output_name": options.output_name,
        "ss_learning_rate": options.learning_rate,
        "ss_num_train_items": values["num_train_items"],
        "ss_num_batches_per_epoch": values["num_batches_per_epoch"],
        "ss_num_epochs": values["num_epochs"],
        "ss_gradient_checkpointing": options.gradient_checkpointing,
        "ss_gradient_checkpointing_cpu_offload": options.gradient_checkpointing_cpu_offload,
        "ss_gradient_accumulation_steps": options.gradient_accumulation_steps,
        "ss_max_train_steps": values["max_train_steps"],
        "ss_lr_warmup_steps": options.lr_warmup_steps,
        "ss_lr_scheduler": options.lr_scheduler,
        "ss_network_dropout": options.network_dropout,
        "ss_mixed_precision": options.mixed_precision,
        "ss_seed": options.seed,
        "ss_training_comment": options.training_comment,
        "ss_optimizer": values["optimizer_description"],
        "ss_max_grad_norm": options.max_grad_norm,
        "ss_fp8_base": bool(options.fp8_base),
        "ss_full_fp16": False,
        "ss_full_bf16": False,
        "ss_weighting_scheme": options.weighting_scheme,
        "ss_logit_mean": options.logit_mean,
        "ss_logit_std": options.logit_std,
        "ss_mode_scale": options.mode_scale,
        "ss_guidance_scale": options.guidance_scale,
        "ss_timestep_sampling": options.timestep_sampling,
        "ss_sigmoid_scale": options.sigmoid_scale,
        "ss_discrete_flow_shift": options.discrete_flow_shift,
    }


def training_metadata(
    options: Any,
    architecture: Architecture,
    *,
    session_id: str,
    started_at: float,
    num_train_items: int,
    num_batches_per_epoch: int,
    num_epochs: int,
    max_train_steps: int,
    optimizer_description: str,
    network_metadata: Mapping[str, str],
    network_args: Mapping[str, Any],
    datasets: list[dict[str, Any]],
    model_name: str | Path | None,
    title: str,
) -> dict[str, str]:
    """The metadata of every network file of a run (training-progress keys and hashes are added per save).

    :param model_name: the trained model's file (``--dit``); only its base name is written.
    :param network_args: the parsed ``--network_args`` (written as given on the command line, as strings).
    """
    meta: dict[str, Any] = _record(
        options,
        session_id=session_id,
        started_at=started_at,
        num_train_items=num_train_items,
        num_batches_per_epoch=num_batches_per_epoch,
        num_epochs=num_epochs,
        max_train_steps=max_train_steps,
        optimizer_description=optimizer_description,
    )
    meta.update(network_metadata)
    if options.network_module is not None:
        meta["ss_network_module"] = options.network_module
    meta["ss_datasets"] = json.dumps(datasets)
    args = _network_args(options.network_args) or (json.dumps(dict(network_args)) if network_args else None)
    if args is not None:
        meta["ss_network_args"] = args
    vae = architecture.component_path("vae", options)
    for key, path in (("ss_sd_model_name", model_name), ("ss_vae_name", vae)):
        name = file_name(path)
        if name is not None:
            meta[key] = name
    meta = {k: str(v) for k, v in meta.items()}
    meta.update(
        {
            "modelspec.sai_model_spec": "1.0.0",
            "modelspec.title": title,
            "modelspec.date": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started_at)),
            "modelspec.resolution": "1280x720",
        }
    )
    meta.update(architecture.network_metadata())
    if options.no_metadata:
        meta = {k: v for k, v in meta.items() if k in MINIMUM_KEYS or k.startswith("modelspec.")}
    return meta


def progress_metadata(*, epoch: int, steps: int, finished: bool) -> dict[str, str]:
    """Keys that change with every save; like the reference, ``ss_training_finished_at`` is the time of each
    save (``finished`` is accepted for callers that tell the final save apart)."""
    return {"ss_training_finished_at": str(time.time()), "ss_steps": str(steps), "ss_epoch": str(epoch)}
