"""Caption encoding as the reference does it: template, crop, hidden state [-3], 512 rows + mask, CLIP pooler."""

from __future__ import annotations

import pytest
import torch
from transformers import CLIPTextModel, LlamaModel

from tuner_core.memory.fp8_linear import Fp8Linear
from tuner_framepack.encoders import (
    PromptEmbeddings,
    crop_or_pad_with_mask,
    encode_prompt,
    format_prompt,
    load_text_encoder1,
    load_text_encoder2,
    load_tokenizers,
    template_crop,
)
from tuner_framepack.encoders.prompt_template import template_prefix
from tuner_framepack.testing.tiny_encoders import TinyEncoderKit, save_tiny_encoder_kit

F32 = torch.float32
FP8 = torch.float8_e4m3fn
CAPTION = "A red car drives along a coastal road at sunset."
#: The reference's template, typed from the reference notes (real newlines, no space between "video." and "2.").
REFERENCE_TEMPLATE = (
    "<|start_header_id|>system<|end_header_id|>\n\nDescribe the video by detailing the following aspects: "
    "1. The main content and theme of the video.2. The color, shape, size, texture, quantity, text, and "
    "spatial relationships of the objects.3. Actions, events, behaviors temporal relationships, physical "
    "movement changes of the objects.4. background environment, light, style and atmosphere.5. camera "
    "angles, movements, and transitions used in the video:<|eot_id|><|start_header_id|>user<|end_header_id|>"
    "\n\n{}<|eot_id|>"
)


@pytest.fixture(scope="module")
def kit(tmp_path_factory: pytest.TempPathFactory) -> TinyEncoderKit:
    return save_tiny_encoder_kit(tmp_path_factory.mktemp("encoders"))


@pytest.fixture(scope="module")
def encoders(kit: TinyEncoderKit) -> dict:
    tok1, tok2 = load_tokenizers(kit.text_encoder1.snapshot, kit.text_encoder2.snapshot)
    return {
        "tokenizer1": tok1,
        "text_encoder1": load_text_encoder1(kit.text_encoder1.snapshot, dtype=F32),
        "tokenizer2": tok2,
        "text_encoder2": load_text_encoder2(kit.text_encoder2.snapshot, dtype=F32),
    }


def _caption_token_count(tokenizer, caption: str, system: str | None = None) -> int:
    return len(tokenizer(format_prompt(caption, system))["input_ids"]) - template_crop(tokenizer, system)


def _layer_outputs(model: LlamaModel, run) -> dict[int, torch.Tensor]:
    """Outputs of each decoder layer during ``run()``."""
    outs: dict[int, torch.Tensor] = {}
    hooks = [
        layer.register_forward_hook(
            lambda _m, _a, o, i=i: outs.__setitem__(i, o[0] if isinstance(o, tuple) else o)
        )
        for i, layer in enumerate(model.layers)
    ]
    try:
        run()
    finally:
        for hook in hooks:
            hook.remove()
    return outs


def test_template_is_byte_exact() -> None:
    assert format_prompt("{}") == REFERENCE_TEMPLATE
    assert format_prompt(CAPTION) == REFERENCE_TEMPLATE.format(CAPTION)
    assert format_prompt("x", "Be brief.") == (
        "<|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nx<|eot_id|>"
    )


def test_crop_is_measured_with_the_tokenizer(encoders: dict) -> None:
    tok = encoders["tokenizer1"]
    crop = template_crop(tok)
    prefix_ids = tok(template_prefix())["input_ids"]
    assert crop == len(prefix_ids) and prefix_ids[0] == tok.convert_tokens_to_ids("<|begin_of_text|>")
    assert tok(format_prompt(CAPTION))["input_ids"][:crop] == prefix_ids
    assert template_crop(tok, "Be brief.") == len(tok(template_prefix("Be brief."))["input_ids"]) < crop


def test_prompt_embeddings_shapes_dtypes_and_mask(encoders: dict) -> None:
    out = encode_prompt(CAPTION, **encoders)
    assert isinstance(out, PromptEmbeddings)
    assert out.llama_vec.shape == (512, 256) and out.llama_vec.dtype == F32
    assert out.llama_attention_mask.shape == (512,) and out.llama_attention_mask.dtype == torch.bool
    assert out.clip_l_pooler.shape == (128,) and out.clip_l_pooler.dtype == F32  # 768 for the real CLIP-L
    n = _caption_token_count(encoders["tokenizer1"], CAPTION)
    assert int(out.llama_attention_mask.sum()) == n and bool(out.llama_attention_mask[:n].all())
    assert torch.count_nonzero(out.llama_vec[n:]) == 0 and torch.count_nonzero(out.llama_vec[:n]) > 0


def test_llama_vec_is_hidden_state_minus_3_of_the_caption_tokens(encoders: dict) -> None:
    tok, model = encoders["tokenizer1"], encoders["text_encoder1"]
    seen: dict = {}
    hook = model.register_forward_pre_hook(lambda _m, _a, kw: seen.update(kw), with_kwargs=True)
    try:
        outs = _layer_outputs(model, lambda: seen.update(result=encode_prompt(CAPTION, **encoders)))
    finally:
        hook.remove()
    crop = template_crop(tok)
    # the model saw the template padded to 256 + crop tokens, padding masked out
    assert seen["input_ids"].shape == (1, 256 + crop)
    n = _caption_token_count(tok, CAPTION)
    assert int(seen["attention_mask"].sum()) == crop + n
    # [-3] with 4 layers is the output of layer index 1 (two layers skipped), without the final norm
    expected = outs[len(model.layers) - 3][0, crop : crop + n]
    assert torch.equal(seen["result"].llama_vec[:n], expected)
    assert not torch.allclose(seen["result"].llama_vec[:n], model.norm(expected))


def test_long_captions_are_truncated_to_256_tokens(encoders: dict) -> None:
    caption = " ".join(["waves crash on the rocks while seagulls fly"] * 60)
    assert _caption_token_count(encoders["tokenizer1"], caption) > 256
    out = encode_prompt(caption, **encoders)
    assert int(out.llama_attention_mask.sum()) == 256


def test_custom_system_prompt_changes_the_crop(encoders: dict) -> None:
    tok = encoders["tokenizer1"]
    default = encode_prompt(CAPTION, **encoders)
    custom = encode_prompt(CAPTION, custom_system_prompt="Be brief.", **encoders)
    n = _caption_token_count(tok, CAPTION, "Be brief.")
    assert n == _caption_token_count(tok, CAPTION)  # same caption tokens, different template
    assert int(custom.llama_attention_mask.sum()) == n
    assert not torch.allclose(custom.llama_vec[:n], default.llama_vec[:n])  # the context differs


def test_clip_pooler_is_the_end_token_state_at_length_77(encoders: dict) -> None:
    tok2, clip = encoders["tokenizer2"], encoders["text_encoder2"]
    assert isinstance(clip, CLIPTextModel)
    ids = tok2(CAPTION, padding="max_length", max_length=77, truncation=True, return_tensors="pt")[
        "input_ids"
    ]
    assert ids.shape == (1, 77)
    with torch.no_grad():
        hidden = clip(input_ids=ids).last_hidden_state  # after the final layer norm
    end = int((ids[0] == tok2.eos_token_id).nonzero()[0])
    torch.testing.assert_close(encode_prompt(CAPTION, **encoders).clip_l_pooler, hidden[0, end])


def test_fp8_llm_holds_float8_weights_in_exactly_the_linears(kit: TinyEncoderKit, encoders: dict) -> None:
    fp8 = load_text_encoder1(kit.text_encoder1.comfy_file, dtype=F32, fp8=True)
    linears = {name for name, m in fp8.named_modules() if isinstance(m, torch.nn.Linear)}
    assert len(linears) == 7 * fp8.config.num_hidden_layers  # q, k, v, o, gate, up, down
    assert {name for name, p in fp8.named_parameters() if p.dtype == FP8} == {f"{n}.weight" for n in linears}
    assert all(isinstance(fp8.get_submodule(name), Fp8Linear) for name in linears)
    assert {p.dtype for p in fp8.parameters() if p.dtype != FP8} == {F32}  # embeddings and norms
    assert fp8.embed_tokens.weight.dtype == F32 and fp8.norm.weight.dtype == F32
    full = encode_prompt(CAPTION, **encoders)
    quant = encode_prompt(CAPTION, **{**encoders, "text_encoder1": fp8})
    assert quant.llama_vec.dtype == F32 and torch.equal(quant.llama_attention_mask, full.llama_attention_mask)
    rel = (quant.llama_vec - full.llama_vec).norm() / full.llama_vec.norm()
    cosine = torch.nn.functional.cosine_similarity(quant.llama_vec.flatten(), full.llama_vec.flatten(), dim=0)
    assert 0 < rel < 0.1 and cosine >= 0.99, (rel, cosine)  # float8 weights perturb it a little, not a lot


def test_fp8_llm_computes_as_the_weights_rounded_to_float8(kit: TinyEncoderKit, encoders: dict) -> None:
    """--fp8_llm as it always computed: the full model with each Linear weight cast to float8 and back."""
    rounded = load_text_encoder1(kit.text_encoder1.comfy_file, dtype=F32)
    for module in rounded.modules():
        if isinstance(module, torch.nn.Linear):
            module.weight.data = module.weight.data.to(FP8).to(F32)
    fp8 = load_text_encoder1(kit.text_encoder1.comfy_file, dtype=F32, fp8=True)
    expected = encode_prompt(CAPTION, **{**encoders, "text_encoder1": rounded}).llama_vec
    torch.testing.assert_close(
        encode_prompt(CAPTION, **{**encoders, "text_encoder1": fp8}).llama_vec, expected
    )


def test_fp8_llm_norms_normalise_in_float32(kit: TinyEncoderKit) -> None:
    """The reference's --fp8_llm RMSNorm: normalise in float32, scale by the weight in the input dtype."""
    fp8 = load_text_encoder1(kit.text_encoder1.comfy_file, dtype=torch.float16, fp8=True)
    # Squares of these overflow float16 (above 65504), so a norm computing in float16 gives zeros.
    x = torch.randn(1, 3, fp8.config.hidden_size, dtype=torch.float16) * 300
    norm = fp8.layers[0].input_layernorm
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon)
    assert norm.weight.dtype == torch.float16
    assert torch.equal(norm(x), norm.weight * h.to(torch.float16))


def test_float16_encoders_give_float16_tensors(kit: TinyEncoderKit, encoders: dict) -> None:
    half = {
        **encoders,
        "text_encoder1": load_text_encoder1(kit.text_encoder1.first_shard),
        "text_encoder2": load_text_encoder2(kit.text_encoder2.diffusers_file),
    }
    out = encode_prompt(CAPTION, **half)
    assert out.llama_vec.dtype == torch.float16 and out.clip_l_pooler.dtype == torch.float16
    ref = encode_prompt(CAPTION, **encoders)
    torch.testing.assert_close(out.llama_vec.float(), ref.llama_vec, atol=2e-2, rtol=2e-2)


def test_crop_or_pad_with_mask() -> None:
    vec = torch.arange(12, dtype=F32).reshape(6, 2)
    padded, mask = crop_or_pad_with_mask(vec, 8)
    assert torch.equal(padded[:6], vec) and torch.count_nonzero(padded[6:]) == 0
    assert mask.tolist() == [True] * 6 + [False] * 2
    cropped, mask = crop_or_pad_with_mask(vec, 4)
    assert torch.equal(cropped, vec[:4]) and bool(mask.all()) and mask.shape == (4,)
