"""Core options of ``tuner generate``. Names and defaults follow the musubi-tuner FramePack guide."""

from __future__ import annotations

from pathlib import Path

import attrs

from tuner_core.attention import ATTENTION_MODES
from tuner_core.errors import ConfigError
from tuner_core.options import at_least, option
from tuner_core.seeds import check_seed

PROMPT, MODEL, MEMORY, NETWORK, OUTPUT = "prompt", "model", "memory", "LoRA / LyCORIS", "output"
OUTPUT_TYPES = ("video", "images", "latent", "both", "latent_images")


@attrs.frozen(kw_only=True)
class GenerateOptions:
    """Everything ``tuner generate`` needs besides the architecture's own options."""

    prompt: str | None = option(
        None,
        help="Text prompt (required unless --from_file, --interactive or --latent_path is given).",
        group=PROMPT,
    )
    from_file: Path | None = option(
        None,
        help="Generate one video per line of this text file (prompt plus inline switches such as --w 640 "
        "--h 480 --d 7 --s 25); the models load once for all lines.",
        group=PROMPT,
    )
    interactive: bool = option(
        False,
        help="Read prompts (with inline switches) from the terminal, one video each, keeping the models "
        "loaded; end with exit, quit or Ctrl-D.",
        group=PROMPT,
    )
    negative_prompt: str = option("", help="Negative prompt (used when --guidance_scale > 1).", group=PROMPT)
    seed: int | None = option(
        None,
        help="Random seed, 0 .. 2**64-1 (default: random, written to the output's metadata).",
        group=PROMPT,
        validator=check_seed,
    )
    video_size: list[int] = option(
        factory=lambda: [256, 256],
        help="Video height and width in pixels.",
        nargs=2,
        metavar="PX",
        group=PROMPT,
    )
    fps: int = option(30, help="Frames per second of the written video.", group=PROMPT, validator=at_least(1))
    infer_steps: int = option(25, help="Sampling steps.", group=PROMPT, validator=at_least(1))
    guidance_scale: float = option(
        1.0, help="Classifier-free guidance scale (1.0 runs no negative pass).", group=PROMPT
    )

    attn_mode: str = option("torch", help="Attention backend.", choices=ATTENTION_MODES, group=MODEL)
    split_attn: bool = option(False, help="Run attention one batch element at a time.", group=MODEL)
    device: str | None = option(None, help="Device (default: cuda if available, else cpu).", group=MODEL)

    fp8: bool = option(False, help="Keep block weights in float8_e4m3fn.", group=MEMORY)
    fp8_scaled: bool = option(
        False, help="Quantise block weights to fp8 with block-wise scales.", group=MEMORY
    )
    blocks_to_swap: int = option(
        0,
        help="Transformer blocks kept on the CPU and swapped in per step.",
        group=MEMORY,
        validator=at_least(0),
    )
    use_pinned_memory_for_block_swap: bool = option(
        False, help="Stage swapped blocks through pinned host memory.", group=MEMORY
    )

    lora_weight: list[Path] = option(
        factory=list, help="LoRA / LyCORIS files to merge.", nargs="*", group=NETWORK
    )
    lora_multiplier: list[float] = option(
        factory=list, help="Multiplier per --lora_weight (default 1.0 each).", nargs="*", group=NETWORK
    )
    include_patterns: list[str] = option(
        factory=list,
        help="Per LoRA: regex of weight names to merge (others skipped).",
        nargs="*",
        group=NETWORK,
    )
    exclude_patterns: list[str] = option(
        factory=list, help="Per LoRA: regex of weight names not to merge.", nargs="*", group=NETWORK
    )
    lycoris: bool = option(
        False, help="Merge --lora_weight files through the lycoris-lora package.", group=NETWORK
    )
    save_merged_model: Path | None = option(
        None,
        help="Save the model with LoRAs merged to this file and skip generation (needs only the model "
        "being merged into and the --lora_weight files).",
        group=NETWORK,
        output="file",
    )

    save_path: Path | None = option(
        None,
        help="Directory the outputs are written to, created if missing (required unless "
        "--save_merged_model is given).",
        group=OUTPUT,
        output="directory",
    )
    output_type: str = option(
        "video",
        help="What to write: video (<time>_<seed>.mp4), images (a <time>_<seed>/ folder of PNGs), latent "
        "(<time>_<seed>_latent.safetensors, for --latent_path), both (latent and video), latent_images "
        "(latent and images).",
        choices=OUTPUT_TYPES,
        group=OUTPUT,
    )
    no_metadata: bool = option(
        False,
        help="Do not write the generation settings into the outputs (latent file header, video comment, "
        "PNG text).",
        group=OUTPUT,
    )
    latent_path: list[Path] = option(
        factory=list,
        help="Decode these saved latent files (from --output_type latent, both or latent_images) into a "
        "video each (images with --output_type images or latent_images) instead of generating; needs only the VAE. The "
        "settings a file records (--fps and the architecture's, such as a window size) are used unless "
        "given here.",
        nargs="*",
        group=OUTPUT,
    )

    def __attrs_post_init__(self) -> None:
        height, width = self.video_size
        if height % 8 or width % 8 or height <= 0 or width <= 0:
            raise ConfigError(
                f"--video_size must be two positive multiples of 8 (height width), got {height} {width}"
            )
        if self.lora_multiplier and len(self.lora_multiplier) not in (1, len(self.lora_weight)):
            raise ConfigError(
                f"--lora_multiplier has {len(self.lora_multiplier)} values for {len(self.lora_weight)} --lora_weight files"
            )
        if self.save_path is None and self.save_merged_model is None:
            raise ConfigError("--save_path is required: the directory the outputs are written to")
        if self.from_file is not None and self.interactive:
            raise ConfigError("give --from_file or --interactive, not both")
        prompted = self.from_file is not None or self.interactive or self.latent_path
        if self.prompt is None and not prompted and self.save_merged_model is None:
            raise ConfigError(
                "--prompt is required (unless --from_file, --interactive, --latent_path or "
                "--save_merged_model is given)"
            )
