"""Flow-matching sampling: the sigma schedule, UniPC and Euler against an exactly solvable flow, guidance."""

from __future__ import annotations

import math

import pytest
import torch

from tuner_core.sampling.euler import sample_euler
from tuner_core.sampling.guidance import TIMESTEP_SCALE, flow_denoiser, rescale_guidance
from tuner_core.sampling.sigmas import MAX_FLUX_SHIFT, flux_mu, shifted_sigmas
from tuner_core.sampling.solvers import SOLVERS, sample_flow
from tuner_core.sampling.unipc import UNIPC_VARIANTS, sample_unipc
from tuner_core.training.timesteps import shift_sigmas

# -- an exactly solvable flow ------------------------------------------------------------------------------
# Data x0 ~ N(mu, s^2) per dimension, x_t = (1 - t) x0 + t eps. The exact data prediction is
# E[x0 | x_t] = mu + (1-t) s^2 / ((1-t)^2 s^2 + t^2) * (x_t - (1-t) mu), and the probability-flow ODE
# carries x_1 = eps to x_0 = mu + s * eps.

DIM = 512
_gen = torch.Generator().manual_seed(0)
MU = torch.randn(DIM, generator=_gen, dtype=torch.float64)
STD = 0.3 + torch.rand(DIM, generator=_gen, dtype=torch.float64)
EPS = torch.randn(1, DIM, generator=_gen, dtype=torch.float64)
EXACT = MU + STD * EPS


def gaussian_x0(x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
    t = float(sigma)
    gain = (1 - t) * STD**2 / ((1 - t) ** 2 * STD**2 + t**2)
    return (MU + gain * (x.double() - (1 - t) * MU)).to(x.dtype)


def error(result: torch.Tensor) -> float:
    return float((result.double() - EXACT).abs().max())


class Counting:
    """A denoiser that counts its calls and records the sigmas it saw."""

    def __init__(self, inner=gaussian_x0) -> None:
        self.inner = inner
        self.sigmas: list[float] = []

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        self.sigmas.append(float(sigma))
        return self.inner(x, sigma)


# -- the schedule ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("steps", [1, 5, 25])
@pytest.mark.parametrize("kwargs", [{"shift": 7.0}, {"shift": 1.0}, {"seq_len": 1000}, {"seq_len": 50_000}])
def test_sigmas_run_from_one_to_zero_monotonically(steps: int, kwargs: dict) -> None:
    sigmas = shifted_sigmas(steps, **kwargs)
    assert sigmas.dtype == torch.float32 and sigmas.shape == (steps + 1,)
    assert float(sigmas[0]) == pytest.approx(1.0, abs=1e-7) and float(sigmas[-1]) == 0.0
    assert bool((sigmas[1:] < sigmas[:-1]).all())


@pytest.mark.parametrize("shift", [1.0, 3.0, 7.0, 12.5])
def test_a_given_shift_equals_shift_sigmas_of_the_linspace(shift: float) -> None:
    expected = shift_sigmas(torch.linspace(1, 0, 26, dtype=torch.float64), shift)
    assert torch.allclose(shifted_sigmas(25, shift=shift).double(), expected, rtol=0, atol=3e-7)


def test_seq_len_follows_the_flux_line_and_caps_at_ln7() -> None:
    assert flux_mu(256) == pytest.approx(0.5) and flux_mu(4096) == pytest.approx(1.15)
    assert flux_mu(1_000_000) == math.log(MAX_FLUX_SHIFT)
    capped = shifted_sigmas(25, seq_len=1_000_000)
    assert torch.equal(capped, shifted_sigmas(25, shift=7.0))
    # The 25-step k = 7 schedule of FramePack's demo (values from the official code, rounded).
    assert capped[1].item() == pytest.approx(0.994083, abs=1e-6)
    assert capped[-2].item() == pytest.approx(0.225806, abs=1e-6)


def test_shift_wins_over_seq_len() -> None:
    assert torch.equal(shifted_sigmas(10, shift=2.0, seq_len=1_000_000), shifted_sigmas(10, shift=2.0))


@pytest.mark.parametrize(
    ("steps", "kwargs"), [(0, {"shift": 3.0}), (2.5, {"shift": 3.0}), (5, {"shift": 0.0}), (5, {})]
)
def test_bad_schedule_arguments_are_rejected(steps, kwargs: dict) -> None:
    with pytest.raises(ValueError):
        shifted_sigmas(steps, **kwargs)


# -- solvers on the exact flow ----------------------------------------------------------------------------


@pytest.mark.parametrize("steps", [10, 25])
@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_unipc_beats_euler_at_the_same_steps(steps: int, shift: float) -> None:
    sigmas = shifted_sigmas(steps, shift=shift)
    euler = error(sample_euler(gaussian_x0, EPS, sigmas))
    for variant in UNIPC_VARIANTS:
        assert error(sample_unipc(gaussian_x0, EPS, sigmas, variant=variant)) < 0.7 * euler


@pytest.mark.parametrize("variant", UNIPC_VARIANTS)
def test_unipc_converges_as_steps_grow(variant: str) -> None:
    errors = [
        error(sample_unipc(gaussian_x0, EPS, shifted_sigmas(n, shift=3.0), variant=variant))
        for n in (5, 10, 25, 50, 100)
    ]
    assert all(later < earlier for earlier, later in zip(errors, errors[1:]))
    assert errors[-1] < 0.02


def test_euler_converges_at_first_order() -> None:
    errors = [error(sample_euler(gaussian_x0, EPS, shifted_sigmas(n, shift=1.0))) for n in (25, 50, 100)]
    assert all(later < earlier for earlier, later in zip(errors, errors[1:]))
    assert errors[1] / errors[2] == pytest.approx(2.0, rel=0.1)


def test_float32_latents_stay_close_to_float64() -> None:
    sigmas = shifted_sigmas(25, shift=7.0)
    single = sample_unipc(gaussian_x0, EPS.float(), sigmas)
    assert single.dtype == torch.float32
    assert float((single.double() - sample_unipc(gaussian_x0, EPS, sigmas)).abs().max()) < 1e-5


@pytest.mark.parametrize("steps", [1, 2, 3, 4, 10])
@pytest.mark.parametrize("solver", sorted(SOLVERS))
def test_one_denoiser_call_per_step(solver: str, steps: int) -> None:
    sigmas = shifted_sigmas(steps, shift=3.0)
    counting = Counting()
    seen: list[tuple[int, int]] = []
    sample_flow(counting, EPS, sigmas, solver=solver, callback=lambda i, n, x0: seen.append((i, n)))
    # Every sigma but the final 0 is evaluated once, in order.
    assert counting.sigmas == pytest.approx(sigmas[:-1].tolist())
    assert seen == [(i, steps) for i in range(steps)]


@pytest.mark.parametrize("solver", sorted(SOLVERS))
def test_the_result_is_the_last_data_prediction(solver: str) -> None:
    predictions: list[torch.Tensor] = []
    sigmas = shifted_sigmas(6, shift=3.0)
    result = sample_flow(
        gaussian_x0, EPS, sigmas, solver=solver, callback=lambda i, n, x0: predictions.append(x0)
    )
    assert torch.equal(result, predictions[-1])


def test_one_step_is_one_prediction_at_sigma_one() -> None:
    for solver in SOLVERS:
        assert torch.equal(
            sample_flow(gaussian_x0, EPS, shifted_sigmas(1, shift=3.0), solver=solver), gaussian_x0(EPS, 1.0)
        )


def _regression_denoiser(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    s = float(sigma)
    y = x.roll(1, dims=1)
    c = torch.tensor([0.3, -0.2, 0.1, 0.5], dtype=x.dtype)
    return (0.5 + 0.3 * s) * x + (1 - s) * c + 0.2 * s * y**2 / (1 + y**2)


# Produced by FramePack's official uni_pc_fm.sample_unipc (run in float64 on these float32 sigmas, printed to
# 15 significant digits); this implementation agreed with it to within 1e-15 there.
REGRESSION = {
    (3, "bh1"): [0.865834582608123, -0.308075531303931, 0.221985625826188, 1.43072491539109],
    (3, "bh2"): [0.867290580159799, -0.307937589583528, 0.222283829095889, 1.43349277270474],
    (5, "bh1"): [0.818136031230783, -0.320888076111874, 0.216693831967985, 1.34997015188473],
    (5, "bh2"): [0.818080999694682, -0.32089476611049, 0.216682310685489, 1.34986742625089],
}


@pytest.mark.parametrize(("steps", "variant"), sorted(REGRESSION))
def test_unipc_matches_the_official_sampler_on_fixed_values(steps: int, variant: str) -> None:
    start = torch.tensor([[1.0, -0.5, 0.25, 2.0]], dtype=torch.float64)
    result = sample_unipc(_regression_denoiser, start, shifted_sigmas(steps, shift=3.0), variant=variant)
    assert torch.allclose(
        result, torch.tensor([REGRESSION[steps, variant]], dtype=torch.float64), rtol=0, atol=1e-12
    )


def test_unknown_names_list_the_choices() -> None:
    sigmas = shifted_sigmas(3, shift=3.0)
    with pytest.raises(ValueError, match="unipc.*euler|euler.*unipc"):
        sample_flow(gaussian_x0, EPS, sigmas, solver="heun")
    with pytest.raises(ValueError, match="bh1, bh2"):
        sample_unipc(gaussian_x0, EPS, sigmas, variant="bh3")


@pytest.mark.parametrize("sigmas", [[1.0], [1.0, 0.0, 0.0], [1.0, -0.5], [float("nan"), 0.0], [[1.0, 0.0]]])
def test_unusable_schedules_are_rejected(sigmas) -> None:
    with pytest.raises(ValueError):
        sample_euler(gaussian_x0, EPS, torch.tensor(sigmas))


# -- guidance ---------------------------------------------------------------------------------------------


class VelocityRecorder:
    """A velocity model whose positive and negative passes differ; it records what it was given."""

    def __init__(self) -> None:
        self.calls: list[dict] = []

    def __call__(self, x, *, timestep, guidance, positive):
        self.calls.append({"x": x, "timestep": timestep, "guidance": guidance, "positive": positive})
        return torch.sin(x) * (1.5 if positive else 0.5) + (0.1 if positive else -0.2)


X = torch.randn(2, 3, 4, 5, generator=torch.Generator().manual_seed(3))


def test_one_model_call_without_cfg_and_x0_is_x_minus_sigma_v() -> None:
    model = VelocityRecorder()
    x0 = flow_denoiser(model)(X, torch.tensor(0.25))
    assert len(model.calls) == 1 and model.calls[0]["positive"] is True
    assert torch.equal(model.calls[0]["timestep"], torch.full((2,), 250.0))
    assert model.calls[0]["guidance"] is None
    assert torch.allclose(x0, X - 0.25 * (torch.sin(X) * 1.5 + 0.1))


def test_cfg_calls_twice_and_combines() -> None:
    model = VelocityRecorder()
    x0 = flow_denoiser(model, cfg_scale=4.0)(X, 0.5)
    assert [c["positive"] for c in model.calls] == [True, False]
    pos, neg = torch.sin(X) * 1.5 + 0.1, torch.sin(X) * 0.5 - 0.2
    assert torch.allclose(x0, X - 0.5 * (neg + 4.0 * (pos - neg)), atol=1e-6)


def test_distilled_guidance_and_the_model_dtype() -> None:
    model = VelocityRecorder()
    x0 = flow_denoiser(model, embedded_guidance=10.0, model_dtype=torch.bfloat16)(X, torch.tensor(0.994083))
    call = model.calls[0]
    assert call["x"].dtype == torch.bfloat16 and x0.dtype == X.dtype
    # bf16 quantises both, as in the official wrapper: 10 * 1000 -> 9984, 994.083 -> 996.
    assert call["guidance"].tolist() == [9984.0, 9984.0] and call["timestep"].tolist() == [996.0, 996.0]
    recorder = VelocityRecorder()
    flow_denoiser(recorder, embedded_guidance=6.0)(X, 1.0)
    assert recorder.calls[0]["guidance"].tolist() == [6000.0, 6000.0]


def test_per_sample_sigmas_are_accepted() -> None:
    model = VelocityRecorder()
    x0 = flow_denoiser(model)(X, torch.tensor([0.2, 0.8]))
    assert model.calls[0]["timestep"].tolist() == pytest.approx([200.0, 800.0])
    v = torch.sin(X) * 1.5 + 0.1
    assert torch.allclose(x0[1], X[1] - 0.8 * v[1])


def test_guidance_rescale_zero_leaves_cfg_and_one_matches_the_positive_std() -> None:
    pos, neg = torch.sin(X) * 1.5 + 0.1, torch.sin(X) * 0.5 - 0.2
    guided = neg + 5.0 * (pos - neg)
    assert rescale_guidance(guided, pos, 0.0) is guided
    full = rescale_guidance(guided, pos, 1.0)
    dims = [1, 2, 3]
    assert torch.allclose(full.std(dim=dims), pos.std(dim=dims), atol=1e-5)
    half = rescale_guidance(guided, pos, 0.5)
    assert torch.allclose(half, 0.5 * full + 0.5 * guided, atol=1e-6)
    plain = flow_denoiser(VelocityRecorder(), cfg_scale=5.0)(X, 0.5)
    assert torch.equal(flow_denoiser(VelocityRecorder(), cfg_scale=5.0, guidance_rescale=0.0)(X, 0.5), plain)
    rescaled = flow_denoiser(VelocityRecorder(), cfg_scale=5.0, guidance_rescale=1.0)(X, 0.5)
    assert torch.allclose(((X - rescaled) / 0.5).std(dim=dims), pos.std(dim=dims), atol=1e-5)


def test_guidance_rescale_out_of_range_is_rejected() -> None:
    with pytest.raises(ValueError, match="guidance_rescale"):
        flow_denoiser(VelocityRecorder(), guidance_rescale=1.5)


def test_a_wrapped_velocity_model_samples_the_exact_flow() -> None:
    # The exact velocity (x - E[x0|x]) / sigma through the wrapper gives the same result as the x0 denoiser.
    def velocity(x, *, timestep, guidance, positive):
        sigma = float(timestep[0]) / TIMESTEP_SCALE
        return (x - gaussian_x0(x, sigma)) / sigma

    sigmas = shifted_sigmas(10, shift=3.0)
    wrapped = sample_unipc(flow_denoiser(velocity), EPS, sigmas)
    assert torch.allclose(wrapped, sample_unipc(gaussian_x0, EPS, sigmas), atol=1e-6)
