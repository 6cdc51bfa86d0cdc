"""The section loop against an independent transcription of the reference loop (fpack_generate_video).

A cheap fake DiT whose velocity depends on every input (latents, timestep, each history group and its
indices, text, pooled text, image, guidance) makes any difference in layout, conditioning choice, noise
order or casting visible; both loops use it and the same toy solver, and must agree bit for bit.
"""

from __future__ import annotations

import pytest
import torch

from tuner_framepack.encoders.text_encoding import PromptEmbeddings
from tuner_framepack.generation import (
    ImageConditioning,
    ModelCallSettings,
    SectionConditioner,
    StreamedDecoder,
    TimeOrderedFeed,
    generate_sections,
    generation_plan,
    parse_section_strings,
)
from tuner_framepack.testing.tiny_dit import build_tiny_dit, tiny_dit_config
from tuner_framepack.testing.tiny_encoders import build_tiny_vae

C, H, W_LAT = 16, 4, 6
TEXT, POOLED, IMAGE = 8, 5, 7
BF16 = torch.bfloat16


def summary(latents: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """Index-weighted mean over frames, so both the values and their positions matter."""
    weights = (indices.reshape(-1).float() + 1).view(1, 1, -1, 1, 1)
    return (latents.to(BF16).float() * weights).mean(
        dim=2, keepdim=True
    )  # the DiT casts history to its dtype


def fake_dit(**kw: torch.Tensor) -> torch.Tensor:
    x = kw["hidden_states"].float()
    v = 0.3 * x + 1e-3 * kw["timestep"].float().view(-1, 1, 1, 1, 1)
    v = v + 0.01 * kw["latent_indices"].reshape(-1).float().view(1, 1, -1, 1, 1)
    v = v + 1e-4 * summary(kw["clean_latents"], kw["clean_latent_indices"])
    v = v + 2e-4 * summary(kw["clean_latents_2x"], kw["clean_latent_2x_indices"])
    v = v + 3e-4 * summary(kw["clean_latents_4x"], kw["clean_latent_4x_indices"])
    mask = kw["encoder_attention_mask"].float()
    text = (kw["encoder_hidden_states"].float().sum(-1) * mask).sum(-1) / mask.sum(-1)
    extra = text + kw["pooled_projections"].float().mean(-1) + kw["image_embeddings"].float().mean((1, 2))
    return (v + extra.view(-1, 1, 1, 1, 1) + 1e-6 * kw["guidance"].float().view(-1, 1, 1, 1, 1)).to(BF16)


def toy_solver(denoise, x: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """A deterministic first-order flow-matching sampler returning its last x0, like UniPC's contract."""
    x0 = x
    for i in range(len(sigmas) - 1):
        x0 = denoise(x, sigmas[i].expand(x.shape[0]))
        x = x0 + (x - x0) * (sigmas[i + 1] / sigmas[i])
    return x0


def prompt(seed: int, length: int = 5) -> PromptEmbeddings:
    g = torch.Generator().manual_seed(seed)
    vec = torch.zeros(12, TEXT)
    vec[:length] = torch.randn(length, TEXT, generator=g)
    return PromptEmbeddings(vec, torch.arange(12) < length, torch.randn(POOLED, generator=g))


def image(seed: int) -> ImageConditioning:
    g = torch.Generator().manual_seed(seed)
    return ImageConditioning(
        torch.randn(1, C, 1, H, W_LAT, generator=g), torch.randn(1, 9, IMAGE, generator=g)
    )


# -- the reference loop, transcribed --------------------------------------------------------------------
def reference_k_model(dit, kwargs_pos, kwargs_neg, cfg, rescale):
    def k_model(x, sigma):
        sigma = sigma.float()
        x = x.to(BF16)
        timestep = sigma * 1000.0
        pos = dit(hidden_states=x, timestep=timestep, **kwargs_pos).float()
        neg = (
            torch.zeros_like(pos)
            if cfg == 1.0
            else dit(hidden_states=x, timestep=timestep, **kwargs_neg).float()
        )
        pred = neg + cfg * (pos - neg)
        if rescale != 0:
            std_pos = pos.std(dim=list(range(1, pos.ndim)), keepdim=True)
            std_cfg = pred.std(dim=list(range(1, pred.ndim)), keepdim=True)
            pred = rescale * (pred * (std_pos / std_cfg)) + (1.0 - rescale) * pred
        return (x.float() - pred.float() * sigma[:, None, None, None, None]).to(torch.float32)

    return k_model


def text_kwargs(p: PromptEmbeddings) -> dict:
    return {
        "encoder_hidden_states": p.llama_vec[None].to(BF16),
        "encoder_attention_mask": p.llama_attention_mask[None],
        "pooled_projections": p.clip_l_pooler[None].to(BF16),
    }


def reference_layout(history, start_latent, f1, pad, W):
    """The indices and clean latents of one section, as the reference splits them."""
    if not f1:
        indices = torch.arange(0, sum([1, pad, W, 1, 2, 16])).unsqueeze(0)
        pre, _, latent_i, post_i, i2, i4 = indices.split([1, pad, W, 1, 2, 16], dim=1)
        clean_i = torch.cat([pre, post_i], dim=1)
        post, c2, c4 = history[:, :, :19].split([1, 2, 16], dim=2)
        clean = torch.cat([start_latent.to(history), post], dim=2)
    else:
        indices = torch.arange(0, sum([1, 16, 2, 1, W])).unsqueeze(0)
        start_i, i4, i2, i1, latent_i = indices.split([1, 16, 2, 1, W], dim=1)
        clean_i = torch.cat([start_i, i1], dim=1)
        c4, c2, c1 = history[:, :, -19:].split([16, 2, 1], dim=2)
        clean = torch.cat([start_latent.to(history), c1], dim=2)
    return latent_i, clean, clean_i, c2, i2, c4, i4


def reference_generate(S, W, f1, prompts, images, negative, end_latent, seed, sigmas, cfg=1.0, rescale=0.0):
    seed_g = torch.Generator(device="cpu")
    seed_g.manual_seed(seed)
    num_frames = W * 4 - 3
    history = torch.zeros((1, 16, 1 + 2 + 16, H, W_LAT), dtype=torch.float32)
    if end_latent is not None and not f1:
        history[:, :, :1] = end_latent.to(history)
    if not f1:
        total = 0
        paddings = list(reversed(range(S)))
        if S > 4:
            paddings = [3] + [2] * (S - 3) + [1, 0]
    else:
        history = torch.cat([history, images[0].start_latent], dim=2)
        total = 1
        paddings = [0] * S
    for loop_index in range(S):
        if not f1:
            section_index = S - 1 - loop_index
            from_last = -(loop_index + 1)
            is_last = section_index == 0
            pad = paddings[loop_index] * W
        else:
            section_index = loop_index
            from_last = section_index - S
        image_index = from_last if from_last in images else section_index if section_index in images else 0
        start_latent = images[image_index].start_latent
        latent_i, clean, clean_i, c2, i2, c4, i4 = reference_layout(
            history, start_latent, f1, 0 if f1 else pad, W
        )
        prompt_index = from_last if from_last in prompts else section_index if section_index in prompts else 0
        shared = {
            "guidance": torch.tensor([10.0 * 1000.0]).to(dtype=BF16),
            "image_embeddings": images[image_index].image_embeddings.to(BF16),
            "latent_indices": latent_i,
            "clean_latents": clean,
            "clean_latent_indices": clean_i,
            "clean_latents_2x": c2,
            "clean_latent_2x_indices": i2,
            "clean_latents_4x": c4,
            "clean_latent_4x_indices": i4,
        }
        noise = torch.randn((1, 16, (num_frames + 3) // 4, H, W_LAT), generator=seed_g, device=seed_g.device)
        k_model = reference_k_model(
            fake_dit,
            {**shared, **text_kwargs(prompts[prompt_index])},
            {**shared, **text_kwargs(negative)},
            cfg,
            rescale,
        )
        generated = toy_solver(k_model, noise.to(torch.float32), sigmas)
        total += int(generated.shape[2])
        if not f1:
            if is_last:
                generated = torch.cat([start_latent.to(generated), generated], dim=2)
                total += 1
            history = torch.cat([generated.to(history), history], dim=2)
            real = history[:, :, :total]
        else:
            history = torch.cat([history, generated.to(history)], dim=2)
            real = history[:, :, -total:]
    return real


SIGMAS = torch.tensor([1.0, 0.9, 0.6, 0.25, 0.0])


def run_ours(S, W, f1, prompts, images, negative, end_latent, seed, cfg=1.0, rescale=0.0, on_section=None):
    return generate_sections(
        generation_plan(S, W, f1=f1),
        SectionConditioner(prompts, images, negative),
        predict_velocity=fake_dit,
        solver=toy_solver,
        sigmas=SIGMAS,
        generator=torch.Generator("cpu").manual_seed(seed),
        settings=ModelCallSettings(dtype=BF16, guidance_scale=cfg, guidance_rescale=rescale),
        end_latent=end_latent,
        on_section=on_section,
    )


@pytest.mark.parametrize("f1", [False, True], ids=["inverted", "f1"])
@pytest.mark.parametrize("sections", [1, 2, 3, 5, 6])
def test_loop_equals_the_reference_loop(sections: int, f1: bool) -> None:
    keys = parse_section_strings("0:a;;;-1:b;;;1:c")
    prompts = dict(zip(keys, [prompt(1), prompt(2, 3), prompt(3, 12)]))
    images = {0: image(10), 2: image(11), -2: image(12)}
    end = image(20).start_latent
    ours = run_ours(sections, 3, f1, prompts, images, prompt(9), end, seed=31337)
    ref = reference_generate(sections, 3, f1, prompts, images, prompt(9), end, 31337, SIGMAS)
    assert ours.shape == (1, C, 3 * sections + 1, H, W_LAT)
    assert torch.equal(ours, ref)


@pytest.mark.parametrize("f1", [False, True], ids=["inverted", "f1"])
def test_real_cfg_and_rescale_equal_the_reference(f1: bool) -> None:
    prompts, images = {0: prompt(1)}, {0: image(10)}
    ours = run_ours(3, 2, f1, prompts, images, prompt(9, 2), None, seed=5, cfg=3.0, rescale=0.7)
    ref = reference_generate(3, 2, f1, prompts, images, prompt(9, 2), None, 5, SIGMAS, cfg=3.0, rescale=0.7)
    assert torch.equal(ours, ref)
    plain = run_ours(3, 2, f1, prompts, images, prompt(9, 2), None, seed=5)
    assert not torch.equal(plain, ours)


def test_same_seed_same_video_and_results_in_generation_order() -> None:
    prompts, images = {0: prompt(1)}, {0: image(10)}
    seen = []
    first = run_ours(4, 2, False, prompts, images, None, None, seed=7, on_section=seen.append)
    assert torch.equal(first, run_ours(4, 2, False, prompts, images, None, None, seed=7))
    assert not torch.equal(first, run_ours(4, 2, False, prompts, images, None, None, seed=8))
    assert [r.step.section_index for r in seen] == [3, 2, 1, 0]
    assert [r.time_start for r in seen] == [7, 5, 3, 0] and seen[-1].latents.shape[2] == 3
    assert torch.equal(torch.cat([r.latents for r in reversed(seen)], dim=2), first)


def test_cfg_without_negative_prompt_is_refused() -> None:
    with pytest.raises(ValueError, match="negative prompt"):
        run_ours(1, 2, False, {0: prompt(1)}, {0: image(1)}, None, None, seed=0, cfg=2.0)


def test_tiny_dit_and_tiny_vae_end_to_end() -> None:
    """The real packed DiT and VAE at tiny size: F1 sections stream into the decoder as they finish."""
    config = tiny_dit_config(text_embed_dim=TEXT, pooled_projection_dim=POOLED, image_proj_dim=IMAGE)
    dit, vae = build_tiny_dit(config, seed=3), build_tiny_vae(seed=4).eval()
    frames = []
    calls = []

    def decode(latents: torch.Tensor) -> torch.Tensor:
        calls.append(latents.shape[2])
        with torch.no_grad():
            return vae.decode(latents / 0.476986).sample

    decoder = StreamedDecoder(decode, frames.append, sections=3, latent_window_size=2)
    feed = TimeOrderedFeed(decoder.feed)
    written_after = []

    def on_section(result) -> None:
        feed(result)
        written_after.append(decoder.frames_written)

    latents = generate_sections(
        generation_plan(3, 2, f1=True),
        SectionConditioner({0: prompt(1)}, {0: image(2)}),
        predict_velocity=dit,
        solver=toy_solver,
        sigmas=SIGMAS[[0, 2, 4]],
        generator=torch.Generator("cpu").manual_seed(1),
        settings=ModelCallSettings(dtype=torch.float32),
        on_section=on_section,
    )
    assert latents.shape == (1, C, 7, H, W_LAT) and torch.isfinite(latents).all()
    assert decoder.finish() == 25 and sum(f.shape[2] for f in frames) == 25
    assert written_after[0] == 0 and 0 < written_after[1] < written_after[2] == 25  # streamed as generated
    assert max(calls) <= 5
    assert frames[0].shape[1:2] == (3,) and frames[0].shape[-2:] == (8 * H, 8 * W_LAT)
