"""``tuner convert-lora``: rewrite a LoRA file for ComfyUI, diffusers, or back to tuner's layout.

Options are the reference's (``convert_lora.py --input --output --target --diffusers_prefix``). Names are
mapped back to module paths through the model's own layers: the released model of ``--arch`` built empty
(no file needed), or the layers named in ``--dit``'s header.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import load_file

from tuner_core.errors import ConfigError, NotSupportedError
from tuner_core.plugins import Plugins
from tuner_core.training.metadata import model_hashes
from tuner_core.weights import checkpoint_layer_paths, layer_paths, save_safetensors

HELP = "Convert a LoRA file between tuner/kohya and the diffusers / ComfyUI layouts."
TARGET_HELP = (
    "default (or tuner, kohya): tuner / kohya / musubi-tuner names; "
    "other (or comfy): diffusion_model.<module>.lora_A/lora_B with alpha tensors (ComfyUI); "
    "diffusers: transformer.<module>.lora_A/lora_B with alpha in lora_adapter_metadata."
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    """The ``convert-lora`` subcommand of the top-level parser."""
    p = sub.add_parser("convert-lora", help=HELP, description=HELP)
    p.add_argument("--input", type=Path, required=True, help="LoRA file to convert (.safetensors).")
    p.add_argument("--output", type=Path, required=True, help="File to write (.safetensors).")
    p.add_argument(
        "--target",
        required=True,
        choices=("default", "tuner", "kohya", "other", "comfy", "diffusers"),
        help=TARGET_HELP,
    )
    p.add_argument(
        "--diffusers_prefix",
        default=None,
        help="Prefix of the diffusers / ComfyUI names (default: diffusion_model for other/comfy, "
        "transformer for diffusers).",
    )
    p.add_argument("--arch", default="framepack", help="Architecture the LoRA is for (default: framepack).")
    p.add_argument(
        "--dit",
        type=Path,
        default=None,
        help="The model's checkpoint, to read its layer names from (only the header is read); "
        "needed for architectures whose model cannot be built without one.",
    )


def run_convert_lora(args: argparse.Namespace, plugins: Plugins) -> int:
    """Convert ``--input`` to ``--output`` through the installed LoRA network type; print what was written."""
    if not args.input.is_file():
        raise ConfigError(f"--input {args.input} does not exist")
    network = plugins.network("lora")
    architecture = plugins.architecture(args.arch)
    if args.dit is not None:
        paths = checkpoint_layer_paths(args.dit)
    elif args.target in ("default", "tuner", "kohya"):
        paths = []  # tuner's own names need no model
    else:
        try:
            paths = layer_paths(architecture.skeleton())
        except NotSupportedError as exc:
            raise ConfigError(
                f"{exc}; pass --dit with the model's checkpoint (only its header is read)"
            ) from exc
    with safe_open(str(args.input), "pt") as handle:
        metadata = dict(handle.metadata() or {})
    converted = network.convert_weights(
        load_file(str(args.input)),
        metadata,
        layout=architecture.layout,
        target=args.target,
        module_paths=paths,
        prefix=args.diffusers_prefix,
    )
    meta = converted.metadata
    if (
        "sshs_model_hash" in meta or "sshs_legacy_hash" in meta
    ):  # the tensors' names changed: so do the hashes
        meta["sshs_model_hash"], meta["sshs_legacy_hash"] = model_hashes(converted.tensors, meta)
    save_safetensors(converted.tensors, args.output, meta)
    source = "; ".join(converted.source_layouts) or "no LoRA layers"
    print(f"convert-lora: read {args.input} ({source})")
    print(
        f"convert-lora: wrote {args.output}: {converted.layers} layers, {converted.layout} layout "
        f"({converted.prefix}...)"
    )
    return 0
