"""What a weights file is, told from its tensor names: which LoRA spelling, or which other model it is for.

Used to pick the conversion at load time and to word the error for a file that matches nothing: "it looks
like an SDXL text-encoder LoRA" tells the user more than "0 of 264 tensors matched".
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from tuner_lora.formats import hunyuan
from tuner_lora.formats.names import DOWN, parse_key

KOHYA = "kohya / musubi-tuner / tuner (lora_down, lora_up, alpha)"
DIFFUSERS = "diffusers / PEFT / ComfyUI (lora_A, lora_B)"
HUNYUAN_KOHYA = "HunyuanVideo layout, kohya names (double_blocks, single_blocks)"
HUNYUAN_DIFFUSERS = "HunyuanVideo layout, diffusers names (double_blocks, single_blocks)"

#: Tensors of LyCORIS algorithms other than LoRA/LoCon (which use lora_down / lora_up).
LYCORIS = (
    (re.compile(r"\.hada_w[12]_[ab]$"), "a LyCORIS LoHa file"),
    (re.compile(r"\.lokr_w[12](_[ab])?$"), "a LyCORIS LoKr file"),
    (re.compile(r"\.(oft_blocks|oft_diag)$"), "a LyCORIS (diag-)OFT / BOFT file"),
    (re.compile(r"\.(a1\.weight|b1\.weight)$"), "a LyCORIS GLoRA file"),
    (re.compile(r"\.on_input$"), "a LyCORIS (IA)^3 file"),
)
#: Text-encoder LoRA prefixes (kohya and diffusers spellings).
TEXT_ENCODERS = (
    (re.compile(r"^lora_te[12]_"), "an SDXL text-encoder LoRA"),
    (re.compile(r"^lora_te3_"), "an SD3 text-encoder LoRA"),
    (re.compile(r"^lora_te_"), "an SD 1.x / 2.x text-encoder LoRA"),
    (re.compile(r"^(text_encoder|text_encoder_2|te|te1|te2)\."), "a text-encoder LoRA (diffusers layout)"),
)
#: Denoisers of other model families, recognised by layer names (either spelling: ``.`` or ``_``).
FAMILIES = (
    (re.compile(r"(^|[._])(input_blocks|middle_block|output_blocks)[._]\d"), "an SD 1.x / SDXL UNet LoRA"),
    (re.compile(r"(^|[._])(down_blocks|mid_block|up_blocks)[._]"), "an SD 1.x / SDXL UNet LoRA (diffusers)"),
    (re.compile(r"(img_mod[._]lin|modulation[._]lin|[it][mx][gt]_mlp[._][02])$"), "a FLUX.1 LoRA"),
    (re.compile(r"(^|[._])blocks[._]\d+[._](self_attn|cross_attn|ffn)[._]"), "a Wan 2.x LoRA"),
    (re.compile(r"transformer_blocks[._]\d+[._](img_mod|txt_mod|img_mlp|txt_mlp)[._]"), "a Qwen-Image LoRA"),
    (re.compile(r"(^|[._])layers[._]\d+[._](attention|feed_forward)[._]"), "a Z-Image LoRA"),
    (re.compile(r"transformer_blocks[._]\d+[._]attn[12][._]"), "an LTX-Video / SD3-style DiT LoRA"),
    (re.compile(r"(^|[._])(double_blocks|single_blocks)[._]\d"), "a HunyuanVideo / FLUX.1 LoRA"),
    (re.compile(r"(^|[._])(single_)?transformer_blocks[._]\d"), "a HunyuanVideo / FramePack LoRA"),
)


def _modules(keys: Iterable[str], network_prefix: str) -> list[tuple[str, bool]]:
    """``(module name, dotted)`` of every LoRA tensor's layer."""
    parsed = (parse_key(k, network_prefix) for k in keys)
    return [(p.module, p.dotted) for p in parsed if p is not None]


def lora_layouts(keys: Iterable[str], network_prefix: str) -> set[str]:
    """The LoRA spellings among ``keys`` (:data:`KOHYA`, :data:`DIFFUSERS`, the HunyuanVideo ones)."""
    found = set()
    for module, dotted in _modules(keys, network_prefix):
        if dotted:
            found.add(HUNYUAN_DIFFUSERS if hunyuan.is_hunyuan_path(module) else DIFFUSERS)
        else:
            found.add(HUNYUAN_KOHYA if hunyuan.kohya_path(module) else KOHYA)
    return found


def is_lora(keys: Iterable[str], network_prefix: str) -> bool:
    """Whether ``keys`` hold LoRA layers (a ``lora_down`` / ``lora_A``) other than text-encoder ones only."""
    downs = [k for k in keys if (p := parse_key(k, network_prefix)) is not None and p.part == DOWN]
    return bool(downs) and not all(_text_encoder(k) for k in downs)


def _text_encoder(key: str) -> str | None:
    return next((what for pattern, what in TEXT_ENCODERS if pattern.search(key)), None)


def describe(keys: Iterable[str], network_prefix: str) -> str:
    """What a file with these tensor names looks like, as a noun phrase ("an SDXL text-encoder LoRA")."""
    keys = sorted(keys)
    if not keys:
        return "an empty file (no tensors)"
    for pattern, what in LYCORIS:
        if any(pattern.search(k) for k in keys):
            return what + " (load it with --lycoris)"
    if not _modules(keys, network_prefix) and all(k.endswith((".weight", ".bias")) for k in keys):
        # Plain layer weights, no adapter tensor: the model itself (a DiT shard given as a LoRA, say).
        return f"a model checkpoint, not a LoRA (plain layer weights such as {keys[0]!r})"
    encoders = {what for k in keys if (what := _text_encoder(k))}
    denoiser = [k for k in keys if not _text_encoder(k)]
    modules = [m for m, _ in _modules(denoiser, network_prefix)] or [
        re.sub(r"^lora_unet_", "", k) for k in denoiser
    ]
    family = next((what for pattern, what in FAMILIES for m in modules if pattern.search(m)), None)
    if family is None and encoders and not denoiser:
        return " / ".join(sorted(encoders))
    if family is None:
        sample = (modules or keys)[0]
        family = (
            f"a file for layers like {sample!r}" if modules else f"no LoRA at all (tensors like {sample!r})"
        )
    return family + (" with text-encoder layers" if encoders else "")
