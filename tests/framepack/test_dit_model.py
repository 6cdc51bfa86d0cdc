"""Behaviour of the packed DiT on its own: gradients, per-block checkpointing, padding, batching, precision."""

from __future__ import annotations

import pytest
import torch
from torch.utils.checkpoint import checkpoint

from tuner_framepack.architecture import DOUBLE_BLOCK, SINGLE_BLOCK, FramePackArchitecture
from tuner_framepack.dit import HunyuanVideoTransformer3DModelPacked
from tuner_framepack.testing.tiny_dit import build_tiny_dit, tiny_dit_config, tiny_dit_inputs

CONFIG = tiny_dit_config()


@pytest.fixture(scope="module")
def model():
    return build_tiny_dit(CONFIG, seed=11)


def run(model, **inputs):
    with torch.no_grad():
        return model(**inputs)


def test_layout_matches_the_architecture_declaration(model):
    layout = FramePackArchitecture.layout
    for name, cls_name in zip(layout.block_lists, (DOUBLE_BLOCK, SINGLE_BLOCK)):
        blocks = getattr(model, name)
        assert isinstance(blocks, torch.nn.ModuleList) and len(blocks) == 2
        assert {type(b).__name__ for b in blocks} == {cls_name}
    assert set(layout.network_targets) == {DOUBLE_BLOCK, SINGLE_BLOCK}


def test_every_parameter_gets_a_gradient(model):
    inputs = tiny_dit_inputs(CONFIG, batch=2, text_lengths=(7, 16))
    for value in inputs.values():
        if value.is_floating_point():
            value.requires_grad_()
    model.train()
    try:
        model(**inputs).square().mean().backward()
        for name, param in model.named_parameters():
            assert param.grad is not None and torch.isfinite(param.grad).all(), name
            if not name.endswith("to_k.bias") and "add_k_proj.bias" not in name:  # softmax ignores key biases
                assert param.grad.abs().max() > 0, name
        for key in (
            "hidden_states",
            "clean_latents",
            "clean_latents_2x",
            "clean_latents_4x",
            "image_embeddings",
        ):
            assert inputs[key].grad.abs().max() > 0, key
        # padded text tokens get no gradient: they influence nothing
        assert torch.count_nonzero(inputs["encoder_hidden_states"].grad[0, 7:]) == 0
    finally:
        model.zero_grad(set_to_none=True)
        model.eval()


def test_checkpointing_each_block_from_outside_changes_nothing():
    inputs = tiny_dit_inputs(CONFIG, batch=2, text_lengths=(5, 12), height=14, width=6)
    plain = build_tiny_dit(CONFIG, seed=2).train()
    wrapped = build_tiny_dit(CONFIG, seed=2).train()
    calls = []
    for blocks in (wrapped.transformer_blocks, wrapped.single_transformer_blocks):
        for block in blocks:
            original = block.forward

            def forward(*args, _original=original, **kwargs):
                calls.append(1)
                return checkpoint(_original, *args, use_reentrant=False, **kwargs)

            block.forward = forward
    out_plain = plain(**inputs)
    out_wrapped = wrapped(**inputs)
    assert len(calls) == 4  # the forward calls every block as a module
    assert torch.equal(out_plain, out_wrapped)
    out_plain.square().mean().backward()
    out_wrapped.square().mean().backward()
    grads = dict(wrapped.named_parameters())
    for name, param in plain.named_parameters():
        assert torch.equal(param.grad, grads[name].grad), name


def test_text_padding_length_and_content_do_not_matter(model):
    inputs = tiny_dit_inputs(CONFIG, batch=1, text_len=9)
    padded = dict(inputs)
    extra = 40 - 9
    padded["encoder_hidden_states"] = torch.cat(
        [inputs["encoder_hidden_states"], 100 * torch.randn(1, extra, CONFIG.text_embed_dim)], dim=1
    )
    padded["encoder_attention_mask"] = torch.arange(40)[None] < 9
    assert torch.equal(run(model, **inputs), run(model, **padded))


def test_batch_equals_separate_samples(model):
    inputs = tiny_dit_inputs(CONFIG, batch=3, text_lengths=(4, 16, 10))
    batched = run(model, **inputs)
    for i in range(3):
        sample = {k: v[i : i + 1] for k, v in inputs.items()}
        torch.testing.assert_close(batched[i : i + 1], run(model, **sample), rtol=1e-5, atol=1e-5)


def test_split_attention_matches_masked_batch():
    inputs = tiny_dit_inputs(CONFIG, batch=2, text_lengths=(3, 14))
    masked = build_tiny_dit(CONFIG, seed=4)
    split = build_tiny_dit(CONFIG, seed=4)
    split.set_attention("sdpa", split_attn=True)
    assert all(m.split_attn for m in split.modules() if hasattr(m, "attn_mode"))
    torch.testing.assert_close(run(split, **inputs), run(masked, **inputs), rtol=1e-5, atol=1e-5)


def test_shared_1d_indices_equal_repeated_rows(model):
    inputs = tiny_dit_inputs(CONFIG, batch=2, text_lengths=(6, 6))
    shared = {k: (v[0] if k.endswith("indices") else v) for k, v in inputs.items()}
    assert torch.equal(run(model, **inputs), run(model, **shared))


def test_each_input_changes_the_output(model):
    inputs = tiny_dit_inputs(CONFIG, batch=1, text_lengths=(12,))
    base = run(model, **inputs)
    for key, value in inputs.items():
        if key == "encoder_attention_mask":
            changed = torch.arange(value.shape[1])[None] < 6
        elif key.endswith("indices"):
            changed = value + 1
        else:
            changed = value + 0.5 * torch.randn_like(value.float()).to(value.dtype)
        out = run(model, **{**inputs, key: changed})
        assert (out - base).abs().max() > 1e-3, key


def test_fp32_proj_out_for_inference():
    fp32 = build_tiny_dit(CONFIG, seed=8)
    inputs = tiny_dit_inputs(CONFIG, batch=1, text_lengths=(10,))
    # bf16 rounds timestep and guidance (10000 -> 9984): give the fp32 reference the same values
    inputs = {k: v.to(torch.bfloat16).float() if v.is_floating_point() else v for k, v in inputs.items()}
    reference = run(fp32, **inputs)
    half = build_tiny_dit(CONFIG, seed=8).to(torch.bfloat16)
    half_inputs = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in inputs.items()}
    plain = run(half, **half_inputs)
    assert plain.dtype == torch.bfloat16
    half.fp32_proj_out = True
    precise = run(half, **half_inputs)
    assert precise.dtype == torch.float32 and half.proj_out.weight.dtype == torch.float32
    assert half.transformer_blocks[0].attn.to_q.weight.dtype == torch.bfloat16
    assert (precise - plain.float()).abs().max() > 0  # the fp32 head changes the numbers
    scale = reference.abs().max()
    assert (precise - reference).abs().max() < 0.1 * scale
    assert (plain.float() - reference).abs().max() < 0.1 * scale


def test_rms_norm_precision_matches_the_official_order():
    from tuner_framepack.dit.layers import RMSNorm

    norm = RMSNorm(32)
    with torch.no_grad():
        norm.weight.copy_(1 + 0.3 * torch.randn(32))
    norm = norm.to(torch.bfloat16)
    x = (3 * torch.randn(5, 32)).to(torch.bfloat16)
    x32 = x.float()
    expected = (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + 1e-6)).to(torch.bfloat16) * norm.weight
    assert torch.equal(norm(x), expected)


def test_bad_inputs_are_clear_errors(model):
    inputs = tiny_dit_inputs(CONFIG, batch=2, text_lengths=(5, 9))
    holes = inputs["encoder_attention_mask"].clone()
    holes[0, 1] = False
    cases = [
        ({"encoder_attention_mask": holes}, "prefix"),
        ({"image_embeddings": None}, "image_embeddings"),
        ({"guidance": None}, "guidance"),
        ({"clean_latent_indices": None}, "without their frame indices"),
        ({"hidden_states": inputs["hidden_states"][..., :5]}, "multiples of the patch"),
        ({"latent_indices": torch.arange(7)}, "frame indices must be"),
        ({"clean_latents": inputs["clean_latents"][..., :6]}, "must match the noisy latents"),
    ]
    for change, message in cases:
        with pytest.raises(ValueError, match=message):
            run(model, **{**inputs, **change})


def test_builds_on_meta_without_memory():
    with torch.device("meta"):
        meta = HunyuanVideoTransformer3DModelPacked(CONFIG)
    assert all(p.is_meta for p in meta.parameters())


def test_rms_norm_backward_is_exact():
    from tuner_framepack.dit.layers import RMSNorm

    norm = RMSNorm(8).double()
    with torch.no_grad():
        norm.weight.copy_(1 + 0.3 * torch.randn(8, dtype=torch.float64))
    x = torch.randn(2, 3, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(norm, (x,))
