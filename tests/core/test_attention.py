"""Attention dispatch: SDPA with and without key padding, split attention, varlen plumbing, missing packages."""

from __future__ import annotations

import math
import sys
import types

import pytest
import torch

from tuner_core.attention import (
    ATTENTION_BACKENDS,
    ATTENTION_MODES,
    attention,
    check_attention_backend,
    normalize_attn_mode,
)
from tuner_core.errors import ConfigError, NotAvailableError


def naive_attention(q, k, v, lengths=None):
    """Reference: explicit softmax(QK^T/sqrt(d))V in (B, L, H, D) layout, keys beyond ``lengths`` masked."""
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(q.shape[-1])
    if lengths is not None:
        keep = torch.arange(k.shape[1])[None, :] < torch.tensor(lengths)[:, None]
        scores = scores.masked_fill(~keep[:, None, None, :], float("-inf"))
    return torch.einsum("bhqk,bkhd->bqhd", scores.softmax(dim=-1), v)


def qkv(batch=2, length=7, heads=2, dim=8, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, length, heads, dim, generator=generator) for _ in range(3)]


def prefix_mask(lengths, total):
    return torch.arange(total)[None, :] < torch.tensor(lengths)[:, None]


def test_sdpa_matches_reference_unmasked():
    q, k, v = qkv()
    torch.testing.assert_close(attention(q, k, v), naive_attention(q, k, v), rtol=1e-5, atol=1e-5)


def test_sdpa_key_padding_matches_reference_on_valid_queries():
    lengths = [7, 4]
    q, k, v = qkv()
    out = attention(q, k, v, attention_mask=prefix_mask(lengths, 7))
    ref = naive_attention(q, k, v, lengths)
    for i, n in enumerate(lengths):
        torch.testing.assert_close(out[i, :n], ref[i, :n], rtol=1e-5, atol=1e-5)
    # a padded sample equals that sample run alone on its valid tokens
    alone = attention(q[1:, :4], k[1:, :4], v[1:, :4])
    torch.testing.assert_close(out[1:, :4], alone, rtol=1e-5, atol=1e-5)


def test_split_attention_matches_masked_and_zeroes_padding():
    lengths = [3, 7]
    q, k, v = qkv()
    mask = prefix_mask(lengths, 7)
    split = attention(q, k, v, attention_mask=mask, split_attn=True)
    masked = attention(q, k, v, attention_mask=mask)
    for i, n in enumerate(lengths):
        torch.testing.assert_close(split[i, :n], masked[i, :n], rtol=1e-5, atol=1e-5)
    assert torch.count_nonzero(split[0, 3:]) == 0
    torch.testing.assert_close(attention(q, k, v, split_attn=True), attention(q, k, v), rtol=1e-5, atol=1e-5)


def test_gradients_flow_through_masked_attention():
    q, k, v = (t.requires_grad_() for t in qkv())
    attention(q, k, v, attention_mask=prefix_mask([5, 7], 7))[0, :5].sum().backward()
    assert q.grad is not None and k.grad is not None and v.grad is not None
    # keys/values beyond a sample's valid length get no gradient
    assert torch.count_nonzero(k.grad[0, 5:]) == 0 and torch.count_nonzero(v.grad[0, 5:]) == 0
    assert torch.count_nonzero(v.grad[0, :5]) > 0


def test_backend_names_and_aliases():
    assert normalize_attn_mode("torch") == "sdpa"
    assert normalize_attn_mode("SageAttn") == "sage"
    assert normalize_attn_mode("flash_attn") == "flash"
    assert set(ATTENTION_BACKENDS) == {"sdpa", "flash", "sage", "xformers"}
    with pytest.raises(ConfigError, match="unknown attention backend"):
        normalize_attn_mode("fast")
    assert check_attention_backend("sdpa", training=True) == "sdpa"


def test_the_options_take_their_attention_modes_from_the_one_table():
    import attrs

    from tuner_core.config.generate_options import GenerateOptions
    from tuner_core.config.train_options import ATTENTION_FLAGS
    from tuner_core.options import META_KEY

    assert attrs.fields_dict(GenerateOptions)["attn_mode"].metadata[META_KEY].choices == ATTENTION_MODES
    assert all(normalize_attn_mode(mode) in ATTENTION_BACKENDS for mode in ATTENTION_MODES)
    assert ATTENTION_FLAGS == {
        "sdpa": "sdpa",
        "flash_attn": "flash",
        "sage_attn": "sage",
        "xformers": "xformers",
    }


@pytest.mark.parametrize(
    ("mode", "package"), [("flash", "flash-attn"), ("sage", "sageattention"), ("xformers", "xformers")]
)
def test_missing_package_is_a_clear_error(monkeypatch, mode, package):
    module = {"flash": "flash_attn", "sage": "sageattention", "xformers": "xformers"}[mode]
    # None in sys.modules makes the import fail even where the package happens to be installed
    monkeypatch.setitem(sys.modules, module, None)
    monkeypatch.setitem(sys.modules, "xformers.ops", None)
    with pytest.raises(NotAvailableError, match=package):
        check_attention_backend(mode)
    q, k, v = qkv()
    with pytest.raises(NotAvailableError, match=package):
        attention(q, k, v, mode=mode)


def test_sage_is_rejected_for_training():
    with pytest.raises(ConfigError, match="inference only"):
        check_attention_backend("sage", training=True)
    q, k, v = (t.requires_grad_() for t in qkv())
    with pytest.raises(NotAvailableError, match="no backward"):
        attention(q, k, v, mode="sage")


def _segment_sdpa(q, k, v, cu_seqlens):
    """A stand-in varlen kernel: SDPA on each packed segment ``cu_seqlens[i]:cu_seqlens[i+1]``."""
    bounds = cu_seqlens.tolist()
    outs = [attention(q[None, a:b], k[None, a:b], v[None, a:b])[0] for a, b in zip(bounds, bounds[1:])]
    return torch.cat(outs, dim=0)


@pytest.fixture
def fake_kernels(monkeypatch):
    """Fake flash-attn / sageattention / xformers modules that record calls and compute with SDPA."""
    calls = []

    def flash_attn_func(q, k, v):
        calls.append("flash")
        return attention(q, k, v)

    def flash_attn_varlen_func(q, k, v, cu_q, cu_k, max_q, max_k):
        calls.append(("flash_varlen", cu_q.tolist(), max_q))
        assert torch.equal(cu_q, cu_k) and cu_q.dtype == torch.int32
        return _segment_sdpa(q, k, v, cu_q)

    def sageattn(q, k, v, tensor_layout, is_causal):
        calls.append("sage")
        assert tensor_layout == "NHD" and not is_causal
        return attention(q, k, v)

    def sageattn_varlen(q, k, v, cu_q, cu_k, max_q, max_k, is_causal):
        calls.append(("sage_varlen", cu_q.tolist(), max_q))
        return _segment_sdpa(q, k, v, cu_q)

    class BlockDiagonalMask:
        def __init__(self, seqlens):
            self.seqlens = seqlens

        @classmethod
        def from_seqlens(cls, seqlens):
            return cls(list(seqlens))

    def memory_efficient_attention(q, k, v, attn_bias=None):
        calls.append(("xformers", None if attn_bias is None else attn_bias.seqlens))
        if attn_bias is None:
            return attention(q, k, v)
        cu = torch.tensor([0, *attn_bias.seqlens]).cumsum(0)
        return _segment_sdpa(q[0], k[0], v[0], cu)[None]

    flash = types.ModuleType("flash_attn")
    flash.flash_attn_func, flash.flash_attn_varlen_func = flash_attn_func, flash_attn_varlen_func
    sage = types.ModuleType("sageattention")
    sage.sageattn, sage.sageattn_varlen = sageattn, sageattn_varlen
    xops = types.ModuleType("xformers.ops")
    xops.memory_efficient_attention = memory_efficient_attention
    xops.fmha = types.SimpleNamespace(BlockDiagonalMask=BlockDiagonalMask)
    monkeypatch.setitem(sys.modules, "flash_attn", flash)
    monkeypatch.setitem(sys.modules, "sageattention", sage)
    monkeypatch.setitem(sys.modules, "xformers", types.ModuleType("xformers"))
    monkeypatch.setitem(sys.modules, "xformers.ops", xops)
    return calls


@pytest.mark.parametrize("mode", ["flash", "sage", "xformers"])
def test_varlen_backends_pack_padding_as_separate_segments(fake_kernels, mode):
    lengths = [4, 7]
    q, k, v = qkv()
    out = attention(q, k, v, mode=mode, attention_mask=prefix_mask(lengths, 7))
    masked = attention(q, k, v, attention_mask=prefix_mask(lengths, 7))
    for i, n in enumerate(lengths):
        torch.testing.assert_close(out[i, :n], masked[i, :n], rtol=1e-5, atol=1e-5)
    call = fake_kernels[-1]
    segments = [4, 3, 7]  # sample 0 valid, sample 0 padding, sample 1 (no padding, no empty segment)
    if mode == "xformers":
        assert call == ("xformers", segments)
    else:
        assert call[1] == [0, 4, 7, 14] and call[2] == 7
    assert attention(q, k, v, mode=mode).shape == q.shape
    assert fake_kernels[-1] == {"flash": "flash", "sage": "sage", "xformers": ("xformers", None)}[mode]


def test_varlen_backends_need_prefix_masks(fake_kernels):
    q, k, v = qkv()
    mask = prefix_mask([7, 7], 7)
    mask[0, 2] = False
    with pytest.raises(ValueError, match="padding at the end"):
        attention(q, k, v, mode="flash", attention_mask=mask)


def test_mask_shape_is_checked():
    q, k, v = qkv()
    with pytest.raises(ValueError, match="attention_mask must be"):
        attention(q, k, v, attention_mask=torch.ones(2, 5, dtype=torch.bool))
