"""The packed DiT against diffusers' ``HunyuanVideoFramepackTransformer3DModel`` on the same weights (fp32).

Weights travel through the real on-disk formats: a tiny random model is saved as 3 diffusers shards +
``config.json`` and as one Kijai-style file, loaded with ``load_dit``, and copied strictly into diffusers.
"""

from __future__ import annotations

import pytest
import torch

from tuner_framepack.dit import HunyuanVideoTransformer3DModelPacked, load_dit
from tuner_framepack.testing.tiny_dit import (
    build_tiny_dit,
    save_diffusers_layout,
    save_single_file,
    tiny_dit_config,
    tiny_dit_inputs,
)

diffusers = pytest.importorskip("diffusers")

RTOL = 1e-4
GROUPS = {  # our input names -> diffusers' names
    "clean": ("clean_latents", "clean_latent_indices", "latents_clean", "indices_latents_clean"),
    "2x": ("clean_latents_2x", "clean_latent_2x_indices", "latents_history_2x", "indices_latents_history_2x"),
    "4x": ("clean_latents_4x", "clean_latent_4x_indices", "latents_history_4x", "indices_latents_history_4x"),
}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Ours loaded from the shard set and from the single file, and diffusers with the same weights."""
    config = tiny_dit_config()
    source = build_tiny_dit(config, seed=3)
    directory = tmp_path_factory.mktemp("dit")
    files = save_diffusers_layout(source, config, directory / "snapshot")
    single = save_single_file(source, directory / "kijai")
    from_shards = load_dit(files.shards[0])
    from_file = load_dit(single, config={"rope_axes_dim": config.rope_axes_dim})
    reference = diffusers.HunyuanVideoFramepackTransformer3DModel(**config.to_dict()).eval()
    reference.load_state_dict(from_shards.state_dict(), strict=True)
    return config, from_shards, from_file, reference


def diffusers_inputs(inputs: dict, row: int = 0, absent: tuple[str, ...] = ()) -> dict:
    """Our inputs under diffusers' names; diffusers takes one 1-D index row for the whole batch."""
    out = {
        "hidden_states": inputs["hidden_states"],
        "timestep": inputs["timestep"],
        "encoder_hidden_states": inputs["encoder_hidden_states"],
        "encoder_attention_mask": inputs["encoder_attention_mask"],
        "pooled_projections": inputs["pooled_projections"],
        "image_embeds": inputs["image_embeddings"],
        "indices_latents": inputs["latent_indices"][row],
        "guidance": inputs["guidance"],
        "return_dict": False,
    }
    for group, (latents, indices, ref_latents, ref_indices) in GROUPS.items():
        if group in absent:  # stand-ins; the patched reference turns them into zero tokens
            out[ref_latents] = inputs["hidden_states"][:, :, :1]
            out[ref_indices] = torch.zeros(0, dtype=torch.long)
        else:
            out[ref_latents], out[ref_indices] = inputs[latents], inputs[indices][row]
    return out


def reference_output(reference, inputs: dict, absent: tuple[str, ...] = (), monkeypatch=None) -> torch.Tensor:
    """diffusers' output; groups in ``absent`` contribute no tokens (diffusers cannot drop a history itself)."""
    if absent:
        embed = reference.clean_x_embedder.forward
        order = ("clean", "2x", "4x")

        def embed_without(*latents):
            tokens = list(embed(*latents))
            return tuple(t[:, :0] if name in absent else t for name, t in zip(order, tokens))

        pad = reference._pad_rotary_emb
        monkeypatch.setattr(reference.clean_x_embedder, "forward", embed_without)
        monkeypatch.setattr(
            reference, "_pad_rotary_emb", lambda emb, *a: emb if emb[0].numel() == 0 else pad(emb, *a)
        )
    with torch.no_grad():
        return reference(**diffusers_inputs(inputs, absent=absent))[0]


def assert_matches(ours: torch.Tensor, ref: torch.Tensor) -> None:
    assert ours.shape == ref.shape
    error = (ours - ref).abs().max().item()
    assert error <= RTOL * ref.abs().max().item(), (
        f"max abs diff {error} vs output scale {ref.abs().max().item()}"
    )


@pytest.mark.parametrize(
    "shape",
    [
        dict(batch=1, text_lengths=(11,)),  # text cropped to its valid length, no mask
        dict(batch=3, text_lengths=(5, 16, 9)),  # masked attention with different text lengths
        dict(batch=2, text_lengths=(16, 16)),  # equal lengths: no mask at batch 2
        dict(batch=1, frames=2, height=14, width=6, text_lengths=(7,)),  # 7x3 grid: replicate padding
        dict(batch=2, frames=1, height=10, width=18, text_lengths=(3, 12)),  # 5x9 grid, one frame
    ],
)
def test_matches_diffusers(models, shape):
    config, from_shards, from_file, reference = models
    inputs = tiny_dit_inputs(config, **shape)
    expected = reference_output(reference, inputs)
    with torch.no_grad():
        assert_matches(from_shards(**inputs), expected)
        assert_matches(from_file(**inputs), expected)


@pytest.mark.parametrize("absent", [("clean",), ("2x",), ("4x",), ("2x", "4x"), ("clean", "2x", "4x")])
def test_without_history_groups_matches_diffusers_with_empty_groups(models, monkeypatch, absent):
    config, model, _, reference = models
    inputs = tiny_dit_inputs(
        config, batch=2, height=14, width=10, text_lengths=(6, 16),
        clean="clean" not in absent, history_2x="2x" not in absent, history_4x="4x" not in absent,
    )  # fmt: skip
    expected = reference_output(reference, inputs, absent, monkeypatch)
    with torch.no_grad():
        ours = model(**inputs)
        assert_matches(ours, expected)
        # and the groups really matter: the full input set gives another prediction
        full = tiny_dit_inputs(config, batch=2, height=14, width=10, text_lengths=(6, 16))
        assert (model(**full) - ours).abs().max() > 1e-2


def test_per_sample_frame_indices_match_separate_diffusers_runs(models):
    config, model, _, reference = models
    inputs = tiny_dit_inputs(config, batch=2, text_lengths=(8, 13))
    inputs["latent_indices"] = torch.stack([inputs["latent_indices"][0], inputs["latent_indices"][1] + 5])
    inputs["clean_latent_4x_indices"] = torch.stack([torch.arange(16), torch.arange(16) + 20])
    with torch.no_grad():
        ours = model(**inputs)
        for row in range(2):
            sample = {k: v[row : row + 1] for k, v in inputs.items()}
            expected = reference(**diffusers_inputs(sample))[0]
            assert_matches(ours[row : row + 1], expected)


def test_state_dict_round_trips_with_diffusers_both_ways(models):
    config, model, _, reference = models
    ours = HunyuanVideoTransformer3DModelPacked(config)
    ours.load_state_dict(reference.state_dict(), strict=True)
    assert set(model.state_dict()) == set(reference.state_dict())
    for key, value in reference.state_dict().items():
        assert model.state_dict()[key].shape == value.shape, key


def test_gradients_match_diffusers(models):
    config, model, _, reference = models
    inputs = tiny_dit_inputs(config, batch=2, text_lengths=(9, 14), height=14, width=6)
    model.train()
    reference.train()
    try:
        model(**inputs).square().mean().backward()
        reference(**diffusers_inputs(inputs))[0].square().mean().backward()
        ref_grads = {name: p.grad for name, p in reference.named_parameters()}
        # key biases get mathematically zero gradients (softmax ignores them): compare on a global scale
        floor = 1e-5 * max(g.abs().max().item() for g in ref_grads.values())
        for name, param in model.named_parameters():
            assert param.grad is not None, name
            torch.testing.assert_close(param.grad, ref_grads[name], rtol=1e-3, atol=floor, msg=name)
    finally:
        model.zero_grad(set_to_none=True)
        reference.zero_grad(set_to_none=True)
        model.eval()
        reference.eval()
