"""Small tokenizers built locally (no hub), laid out on disk as the real HunyuanVideo snapshot has them.

- ``tokenizer/``: a byte-level BPE in the LLaMA-3 style (same pre-tokenizer split, ``<|begin_of_text|>``
  prepended, the chat-template special tokens), saved as ``tokenizer.json`` + ``tokenizer_config.json``.
- ``tokenizer_2/``: a CLIP BPE (``vocab.json`` + ``merges.txt``, ``</w>`` word ends, lower-casing,
  ``<|startoftext|>``/``<|endoftext|>`` as the last two ids so the end token has the highest id, which
  CLIP's pooler relies on).
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from tuner_core.weights import atomic_write, save_json
from tuner_framepack.encoders.prompt_template import DEFAULT_SYSTEM_PROMPT, TEMPLATE_SPECIAL_TOKENS

#: Text the tiny BPEs learn their merges from: the template's system prompt and a few captions.
TRAINING_TEXT = (
    DEFAULT_SYSTEM_PROMPT,
    "A cat walks slowly across a sunny garden, its tail swaying.",
    "A red car drives along a coastal road at sunset; the camera follows from behind.",
    "Close-up of a woman smiling, soft light, shallow depth of field.",
    "Waves crash on the rocks while seagulls fly over the water.",
)
BEGIN_OF_TEXT, END_OF_TEXT = "<|begin_of_text|>", "<|end_of_text|>"
CLIP_START, CLIP_END = "<|startoftext|>", "<|endoftext|>"
#: LLaMA-3's pre-tokenizer split (contractions, words, 1-3 digit numbers, punctuation runs, newlines).
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
#: CLIP's pre-tokenizer split, as in its tokenizer.
_CLIP_SPLIT = (
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
)


def build_tiny_llama_tokenizer(target_dir: Path, vocab_size: int = 320) -> Path:
    """Write a LLaMA-3-style byte-level BPE to ``target_dir`` and return the folder.

    Every byte is in the vocabulary, so any text encodes; the template's special tokens are single ids.
    """
    target_dir = Path(target_dir)
    target_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_LLAMA3_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tokenizer.train_from_iterator(TRAINING_TEXT, trainer)
    specials = [BEGIN_OF_TEXT, END_OF_TEXT, *(t for t in TEMPLATE_SPECIAL_TOKENS if t != BEGIN_OF_TEXT)]
    tokenizer.add_special_tokens(specials)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BEGIN_OF_TEXT} $A",
        pair=f"{BEGIN_OF_TEXT} $A {BEGIN_OF_TEXT} $B",
        special_tokens=[(BEGIN_OF_TEXT, tokenizer.token_to_id(BEGIN_OF_TEXT))],
    )
    with atomic_write(target_dir / "tokenizer.json") as temp:
        tokenizer.save(str(temp))
    save_json(
        {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": BEGIN_OF_TEXT,
            "eos_token": END_OF_TEXT,
            "pad_token": END_OF_TEXT,
            "clean_up_tokenization_spaces": True,
            "model_max_length": 8192,
        },
        target_dir / "tokenizer_config.json",
    )
    return target_dir


def build_tiny_clip_tokenizer(target_dir: Path, merges: int = 64) -> Path:
    """Write a CLIP BPE (``vocab.json``, ``merges.txt``, configs) to ``target_dir`` and return the folder.

    The vocabulary is laid out like CLIP's: the 256 byte symbols, the same with ``</w>``, the learnt merges,
    then ``<|startoftext|>`` and ``<|endoftext|>`` last.
    """
    target_dir = Path(target_dir)
    target_dir.mkdir(parents=True, exist_ok=True)
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    alphabet.sort()
    learner = Tokenizer(models.BPE(end_of_word_suffix="</w>"))
    learner.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    learner.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_CLIP_SPLIT), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    base = alphabet + [symbol + "</w>" for symbol in alphabet]
    trainer = trainers.BpeTrainer(
        vocab_size=len(base) + merges,
        initial_alphabet=alphabet,
        end_of_word_suffix="</w>",
        show_progress=False,
    )
    learner.train_from_iterator(TRAINING_TEXT, trainer)
    learnt = json.loads(learner.to_str())["model"]["merges"]
    pairs = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in learnt]
    vocab: dict[str, int] = {}
    for token in base + ["".join(pair) for pair in pairs] + [CLIP_START, CLIP_END]:
        vocab.setdefault(token, len(vocab))
    save_json(vocab, target_dir / "vocab.json")
    merges_text = "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in pairs)
    with atomic_write(target_dir / "merges.txt") as temp:
        temp.write_text(merges_text, encoding="utf-8")
    specials = {"bos_token": CLIP_START, "eos_token": CLIP_END, "unk_token": CLIP_END, "pad_token": CLIP_END}
    save_json(specials, target_dir / "special_tokens_map.json")
    save_json(
        {"tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "do_lower_case": True, **specials},
        target_dir / "tokenizer_config.json",
    )
    return target_dir
