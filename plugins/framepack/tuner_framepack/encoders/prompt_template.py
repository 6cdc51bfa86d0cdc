"""HunyuanVideo's LLaMA-3 video prompt template ("dit-llm-encode-video") and its token crop.

The LLaMA encoder sees a chat-formatted prompt: a system header with an instruction, then the caption as the
user turn. Only the caption's hidden states are kept, so the template's leading tokens (BOS, system turn,
user header) are cropped; their count is measured with the tokenizer rather than assumed (95 for the real
tokenizer), which keeps any tokenizer and any ``--custom_system_prompt`` correct.
"""

from __future__ import annotations

from typing import Protocol

from tuner_core import ModelLoadError

#: The reference's system instruction, byte for byte (no space between "video." and "2." etc.).
DEFAULT_SYSTEM_PROMPT = (
    "Describe the video by detailing the following aspects: "
    "1. The main content and theme of the video."
    "2. The color, shape, size, texture, quantity, text, and spatial relationships of the objects."
    "3. Actions, events, behaviors temporal relationships, physical movement changes of the objects."
    "4. background environment, light, style and atmosphere."
    "5. camera angles, movements, and transitions used in the video:"
)
#: Special tokens the template needs the tokenizer to know as single tokens.
TEMPLATE_SPECIAL_TOKENS = ("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")
#: What follows the caption.
TEMPLATE_SUFFIX = "<|eot_id|>"


class Tokenizer(Protocol):
    """The slice of a Hugging Face tokenizer this module uses."""

    def __call__(self, text: str, **kwargs: object) -> dict[str, list[int]]: ...

    def convert_tokens_to_ids(self, tokens: str) -> int | None: ...


def template_prefix(system_prompt: str | None = None) -> str:
    """Everything before the caption: the system turn (default instruction or ``system_prompt``) and the
    user header."""
    system = DEFAULT_SYSTEM_PROMPT if system_prompt is None else system_prompt
    return (
        "<|start_header_id|>system<|end_header_id|>\n\n"
        f"{system}<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n"
    )


def format_prompt(caption: str, system_prompt: str | None = None) -> str:
    """The full text the LLaMA encoder tokenises for ``caption``."""
    return template_prefix(system_prompt) + caption + TEMPLATE_SUFFIX


def check_template_tokens(tokenizer: Tokenizer, where: str) -> None:
    """Raise :class:`ModelLoadError` unless each template special token is one known token id."""
    unknown = []
    for token in TEMPLATE_SPECIAL_TOKENS:
        ids = tokenizer(token, add_special_tokens=False)["input_ids"]
        if len(ids) != 1 or ids[0] != tokenizer.convert_tokens_to_ids(token):
            unknown.append(token)
    if unknown:
        raise ModelLoadError(
            f"{where}: this tokenizer does not know the LLaMA-3 template tokens {', '.join(unknown)}; "
            "use the tokenizer of hunyuanvideo-community/HunyuanVideo (subfolder 'tokenizer')."
        )


def template_crop(tokenizer: Tokenizer, system_prompt: str | None = None) -> int:
    """Number of leading tokens (BOS included) that belong to the template, not the caption."""
    return len(tokenizer(template_prefix(system_prompt))["input_ids"])
