"""Metadata written into saved network files: the reference tool's ``ss_*`` keys and SAI model-spec keys."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping
from typing import Any

import torch
from safetensors.torch import save

from tuner_core.architecture import Architecture


def model_hashes(tensors: Mapping[str, torch.Tensor]) -> tuple[str, str]:
    """``(sshs_model_hash, sshs_legacy_hash)``: sha256 of the tensor payload as safetensors writes it
    after its header, and the legacy 8-digit hash of the 64 KiB at offset 1 MiB (kohya's "addnet" hashes)."""
    payload = save({k: v.detach().cpu().contiguous() for k, v in tensors.items()})
    header = int.from_bytes(payload[:8], "little")
    data = payload[8 + header :]
    full = hashlib.sha256(data).hexdigest()
    legacy = hashlib.sha256(payload[0x100000:0x110000]).hexdigest()[:8]
    return full, legacy


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
    model_name: str,
    title: str,
) -> dict[str, str]:
    """The metadata of every network file of a run (training-progress keys are added per save)."""
    meta: dict[str, Any] = {
        "ss_session_id": session_id,
        "ss_training_started_at": started_at,
        "ss_output_name": options.output_name,
        "ss_learning_rate": options.learning_rate,
        "ss_num_train_items": num_train_items,
        "ss_num_batches_per_epoch": num_batches_per_epoch,
        "ss_num_epochs": num_epochs,
        "ss_gradient_checkpointing": options.gradient_checkpointing,
        "ss_gradient_checkpointing_cpu_offload": options.gradient_checkpointing_cpu_offload,
        "ss_gradient_accumulation_steps": options.gradient_accumulation_steps,
        "ss_max_train_steps": max_train_steps,
        "ss_lr_warmup_steps": options.lr_warmup_steps,
        "ss_lr_scheduler": options.lr_scheduler,
        "ss_network_dropout": options.network_dropout,
        "ss_network_args": json.dumps(dict(network_args)) if network_args else None,
        "ss_mixed_precision": options.mixed_precision,
        "ss_seed": options.seed,
        "ss_training_comment": options.training_comment,
        "ss_optimizer": optimizer_description,
        "ss_max_grad_norm": options.max_grad_norm,
        "ss_fp8_base": options.fp8_base,
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
        "ss_datasets": json.dumps(datasets),
        "ss_sd_model_name": model_name,
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.title": title,
        "modelspec.date": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started_at)),
        "modelspec.resolution": "1280x720",
    }
    meta.update(network_metadata)
    meta.update(architecture.network_metadata())
    if options.no_metadata:
        keep = (
            "ss_base_model_version",
            "ss_network_module",
            "ss_network_dim",
            "ss_network_alpha",
            "ss_network_args",
        )
        meta = {k: v for k, v in meta.items() if k in keep or k.startswith("modelspec.")}
    return {k: str(v) for k, v in meta.items() if v is not None}


def progress_metadata(*, epoch: int, steps: int, finished: bool) -> dict[str, str]:
    """Keys that change with every save."""
    meta = {"ss_epoch": str(epoch), "ss_steps": str(steps)}
    if finished:
        meta["ss_training_finished_at"] = str(time.time())
    return meta
