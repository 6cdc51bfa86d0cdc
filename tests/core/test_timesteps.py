"""Noise-level sampling: each mode's distribution, the shift, the timestep window, determinism."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import pytest
import torch

from tuner_core.config.train_options import TrainOptions
from tuner_core.errors import ConfigError
from tuner_core.training.timesteps import (
    NUM_TRAIN_TIMESTEPS,
    NoiseLevels,
    density_samples,
    flux_shift_for_tokens,
    shift_sigmas,
    sigma_table,
)

N = 20_000
QUANTILES = torch.tensor([0.1, 0.25, 0.5, 0.75, 0.9], dtype=torch.float64)
SHAPE = (N, 4, 16, 16)  # 64 tokens after 2x2 patching


def draw(seed: int = 0, shape: tuple[int, ...] = SHAPE, **kwargs: object) -> torch.Tensor:
    sampler = NoiseLevels(**kwargs)
    return sampler.sample_sigmas(shape, generator=torch.Generator().manual_seed(seed))


def quantiles(sigmas: torch.Tensor) -> torch.Tensor:
    return torch.quantile(sigmas.double(), QUANTILES)


def normal_quantiles() -> torch.Tensor:
    return torch.special.ndtri(QUANTILES)


def shift(t: torch.Tensor, s: float) -> torch.Tensor:
    return s * t / (1 + (s - 1) * t)


def test_shift_formula_and_identity() -> None:
    t = torch.tensor([0.0, 0.25, 0.5, 1.0])
    assert torch.allclose(shift_sigmas(t, 3.0), torch.tensor([0.0, 0.5, 0.75, 1.0]))
    assert shift_sigmas(t, 1.0) is t


def test_flux_shift_anchors() -> None:
    assert flux_shift_for_tokens(256) == pytest.approx(math.exp(0.5))
    assert flux_shift_for_tokens(4096) == pytest.approx(math.exp(1.15))
    assert flux_shift_for_tokens(2176) == pytest.approx(math.exp(0.825))  # midpoint


def test_uniform_is_uniform_on_zero_one() -> None:
    sigmas = draw(timestep_sampling="uniform")
    assert sigmas.dtype == torch.float32 and sigmas.shape == (N,)
    assert float(sigmas.min()) > 0 and float(sigmas.max()) <= 1
    assert torch.allclose(quantiles(sigmas), QUANTILES, atol=0.015)


def test_uniform_takes_the_shift() -> None:
    sigmas = draw(timestep_sampling="uniform", discrete_flow_shift=3.0)
    assert torch.allclose(quantiles(sigmas), shift(QUANTILES, 3.0), atol=0.015)


@pytest.mark.parametrize("scale", [1.0, 2.5])
def test_sigmoid_quantiles(scale: float) -> None:
    sigmas = draw(timestep_sampling="sigmoid", sigmoid_scale=scale)
    expected = torch.sigmoid(scale * normal_quantiles())
    assert torch.allclose(quantiles(sigmas), expected, atol=0.015)


def test_shift_mode_quantiles() -> None:
    sigmas = draw(timestep_sampling="shift", discrete_flow_shift=3.0)
    expected = shift(torch.sigmoid(normal_quantiles()), 3.0)
    assert torch.allclose(quantiles(sigmas), expected, atol=0.015)
    assert float(sigmas.median()) == pytest.approx(0.75, abs=0.01)


def test_flux_shift_uses_tokens_after_patching() -> None:
    # 32x32 latent with a 2x2 patch = 256 tokens -> shift e^0.5; with a 1x1 patch = 1024 tokens.
    for patch, tokens in (((2, 2), 256), ((1, 1), 1024)):
        sampler = NoiseLevels(timestep_sampling="flux_shift", patch_size=patch)
        s = flux_shift_for_tokens(tokens)
        assert sampler.shift_for((1, 16, 32, 32)) == pytest.approx(s)
        sigmas = sampler.sample_sigmas((N, 16, 32, 32), generator=torch.Generator().manual_seed(1))
        expected = shift(torch.sigmoid(normal_quantiles()), s)
        assert torch.allclose(quantiles(sigmas), expected, atol=0.015)


def test_flux_shift_ignores_discrete_flow_shift_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        NoiseLevels(timestep_sampling="flux_shift", discrete_flow_shift=3.0)
    assert "--discrete_flow_shift 3 is ignored" in caplog.text
    a = draw(timestep_sampling="flux_shift", discrete_flow_shift=3.0)
    b = draw(timestep_sampling="flux_shift")
    assert torch.equal(a, b)


def test_logsnr_quantiles_and_shift() -> None:
    mean, std = -1.0, 1.5
    sigmas = draw(timestep_sampling="logsnr", logit_mean=mean, logit_std=std)
    # t = sigmoid(-logsnr/2) is decreasing in logsnr, so quantile q of t comes from quantile 1-q of logsnr.
    expected = torch.sigmoid(-(mean + std * torch.special.ndtri(1 - QUANTILES)) / 2)
    assert torch.allclose(quantiles(sigmas), expected, atol=0.015)
    shifted = draw(timestep_sampling="logsnr", logit_mean=mean, logit_std=std, discrete_flow_shift=2.0)
    assert torch.allclose(quantiles(shifted), shift(expected, 2.0), atol=0.015)


def test_sigma_mode_matches_diffusers_density_on_the_table() -> None:
    diffusers_utils = pytest.importorskip("diffusers.training_utils")
    table = torch.arange(1000, 0, -1, dtype=torch.float64) / 1000
    for scheme in ("none", "logit_normal", "mode"):
        kwargs = {"logit_mean": 0.3, "logit_std": 1.2, "mode_scale": 1.29}
        u = diffusers_utils.compute_density_for_timestep_sampling(
            scheme, 512, generator=torch.Generator().manual_seed(7), **kwargs
        )
        expected = table[(u * 1000).long().clamp(0, 999)].float()
        got = draw(7, (512, 4, 8, 8), timestep_sampling="sigma", weighting_scheme=scheme, **kwargs)
        assert torch.equal(got, expected), scheme


def test_sigma_mode_values_lie_on_the_table() -> None:
    sigmas = draw(timestep_sampling="sigma")
    levels = torch.round(sigmas.double() * 1000)
    assert torch.allclose(sigmas.double() * 1000, levels, atol=1e-3)
    assert float(levels.min()) >= 1 and float(levels.max()) <= 1000
    assert torch.allclose(quantiles(sigmas), QUANTILES, atol=0.015)


def test_sigma_mode_applies_the_shift_to_the_table() -> None:
    assert torch.allclose(sigma_table(3.0), shift(sigma_table(1.0), 3.0))
    plain = draw(3, timestep_sampling="sigma")
    shifted = draw(3, timestep_sampling="sigma", discrete_flow_shift=3.0)
    assert torch.allclose(shifted, shift(plain.double(), 3.0).float(), atol=1e-6)
    assert float(shifted.median()) == pytest.approx(0.75, abs=0.01)


def test_sigma_mode_logit_normal_and_mode_shapes() -> None:
    logit = draw(timestep_sampling="sigma", weighting_scheme="logit_normal")
    expected = 1 - torch.sigmoid(normal_quantiles()).flip(0)  # sigma ~ 1 - u on the descending table
    assert torch.allclose(quantiles(logit), expected, atol=0.015)
    mode = draw(timestep_sampling="sigma", weighting_scheme="mode", mode_scale=1.29)
    # The mode density with a positive scale concentrates around the middle: narrower than uniform.
    q = quantiles(mode)
    assert q[0] > 0.15 and q[-1] < 0.85 and float(q[2]) == pytest.approx(0.5, abs=0.015)


@pytest.mark.parametrize("mode", ["uniform", "shift", "logsnr"])
def test_window_rescales_by_default(mode: str) -> None:
    free = draw(timestep_sampling=mode, discrete_flow_shift=2.0)
    bounded = draw(timestep_sampling=mode, discrete_flow_shift=2.0, min_timestep=200, max_timestep=500)
    assert float(bounded.min()) >= 0.2 and float(bounded.max()) <= 0.5
    assert torch.allclose(bounded, free * 0.3 + 0.2, atol=1e-6)  # same draws, linearly mapped


@pytest.mark.parametrize("mode", ["uniform", "shift", "logsnr"])
def test_window_rejection_preserves_the_shape(mode: str) -> None:
    kwargs = {"timestep_sampling": mode, "discrete_flow_shift": 2.0}
    bounded = draw(5, min_timestep=300, max_timestep=700, preserve_distribution_shape=True, **kwargs)
    assert bounded.shape == (N,)
    assert float(bounded.min()) >= 0.3 and float(bounded.max()) <= 0.7
    free = draw(6, shape=(4 * N, 1, 2, 2), **kwargs)
    conditional = free[(free >= 0.3) & (free <= 0.7)]
    assert torch.allclose(quantiles(bounded), quantiles(conditional), atol=0.015)


def test_sigma_mode_window_rescales_over_the_table_entries_inside_it() -> None:
    sigmas = draw(timestep_sampling="sigma", min_timestep=200, max_timestep=500)
    levels = torch.round(sigmas.double() * 1000)
    assert float(levels.min()) == 200 and float(levels.max()) == 500  # both ends reachable
    assert torch.allclose(quantiles(sigmas), 0.2 + 0.3 * QUANTILES, atol=0.015)
    shifted = draw(timestep_sampling="sigma", discrete_flow_shift=3.0, min_timestep=200, max_timestep=500)
    assert float(shifted.min()) >= 0.2 - 1e-6 and float(shifted.max()) <= 0.5 + 1e-6
    on_table = torch.isclose(shifted.double()[:, None], sigma_table(3.0)[None, :], atol=1e-6).any(dim=1)
    assert bool(on_table.all())


def test_sigma_mode_window_rejection() -> None:
    kwargs = {"timestep_sampling": "sigma", "weighting_scheme": "logit_normal"}
    bounded = draw(min_timestep=100, max_timestep=400, preserve_distribution_shape=True, **kwargs)
    assert float(bounded.min()) >= 0.1 and float(bounded.max()) <= 0.4 + 1e-6
    free = draw(1, shape=(4 * N, 1, 2, 2), **kwargs)
    conditional = free[(free >= 0.1) & (free <= 0.4 + 1e-6)]
    assert torch.allclose(quantiles(bounded), quantiles(conditional), atol=0.015)


def test_rejection_that_cannot_fill_the_batch_is_a_config_error() -> None:
    sampler = NoiseLevels(
        timestep_sampling="sigmoid",
        sigmoid_scale=0.01,  # t stays within a hair of 0.5
        min_timestep=0,
        max_timestep=100,
        preserve_distribution_shape=True,
    )
    with pytest.raises(ConfigError, match="--preserve_distribution_shape"):
        sampler.sample_sigmas((4, 1, 2, 2), generator=torch.Generator().manual_seed(0))


def test_deterministic_given_a_generator() -> None:
    for mode in ("sigma", "uniform", "shift", "flux_shift", "logsnr"):
        a = draw(11, (8, 4, 8, 8), timestep_sampling=mode, min_timestep=50, max_timestep=950)
        b = draw(11, (8, 4, 8, 8), timestep_sampling=mode, min_timestep=50, max_timestep=950)
        c = draw(12, (8, 4, 8, 8), timestep_sampling=mode, min_timestep=50, max_timestep=950)
        assert torch.equal(a, b) and not torch.equal(a, c), mode


def test_noisy_input_mixes_and_feeds_sigma_times_1000() -> None:
    sampler = NoiseLevels(timestep_sampling="shift", discrete_flow_shift=3.0)
    latents = torch.randn(3, 4, 2, 5, 6)
    out = sampler.noisy_input(latents, generator=torch.Generator().manual_seed(4))
    again = sampler.noisy_input(latents, generator=torch.Generator().manual_seed(4))
    assert torch.equal(out.noisy_latents, again.noisy_latents) and torch.equal(out.noise, again.noise)
    assert out.sigmas.shape == (3,) and out.timesteps.dtype == torch.float32
    assert torch.equal(out.timesteps, out.sigmas * NUM_TRAIN_TIMESTEPS)  # no +1 offset
    s = out.sigmas.view(-1, 1, 1, 1, 1)
    assert torch.allclose(out.noisy_latents, (1 - s) * latents + s * out.noise)
    noise = torch.ones_like(latents)
    given = sampler.noisy_input(latents, generator=torch.Generator().manual_seed(4), noise=noise)
    assert given.noise is noise and torch.equal(given.sigmas, out.sigmas)


def test_from_options_reads_the_train_option_names() -> None:
    options = TrainOptions(
        dataset_config=Path("dataset.toml"),
        output_dir=Path("out"),
        timestep_sampling="logsnr",
        discrete_flow_shift=2.0,
        logit_mean=0.5,
        min_timestep=10,
        max_timestep=900,
        preserve_distribution_shape=True,
    )
    sampler = NoiseLevels.from_options(options, patch_size=(1, 2))
    assert sampler.timestep_sampling == "logsnr" and sampler.timestep_window == (10.0, 900.0)
    assert sampler.logit_mean == 0.5 and sampler.discrete_flow_shift == 2.0
    assert sampler.patch_size == (1, 2) and sampler.preserve_distribution_shape


@pytest.mark.parametrize(
    ("kwargs", "option"),
    [
        ({"timestep_sampling": "cosine"}, "--timestep_sampling"),
        ({"discrete_flow_shift": 0.0}, "--discrete_flow_shift"),
        ({"sigmoid_scale": -1.0}, "--sigmoid_scale"),
        ({"logit_std": 0.0}, "--logit_std"),
        ({"min_timestep": 500, "max_timestep": 400}, "--min_timestep"),
        ({"min_timestep": 1000}, "--min_timestep"),
        ({"max_timestep": 1200}, "--max_timestep"),
        ({"weighting_scheme": "mode", "mode_scale": 3.0}, "--mode_scale"),
        ({"discrete_flow_shift": 3.0, "min_timestep": 0, "max_timestep": 2}, "--max_timestep"),
    ],
)
def test_bad_settings_are_config_errors(kwargs: dict[str, object], option: str) -> None:
    with pytest.raises(ConfigError, match=option):
        NoiseLevels(**kwargs)


def test_density_samples_uniform_by_default() -> None:
    u = density_samples("none", N, generator=torch.Generator().manual_seed(0))
    assert float(u.min()) >= 0 and float(u.max()) < 1
    assert torch.allclose(quantiles(u), QUANTILES, atol=0.015)
