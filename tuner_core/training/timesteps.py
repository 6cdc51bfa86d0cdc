"""Flow-matching noise levels for a training batch: draw sigmas, build the noisy input and the timesteps.

Convention (rectified flow): ``x_t = (1 - sigma) * x0 + sigma * noise`` with sigma in (0, 1]; sigma = 1 is
pure noise. The model is fed ``timestep = sigma * 1000``, the same scale inference uses, and learns the
velocity ``noise - x0``.

Sampling modes (``--timestep_sampling``), with ``shift(t) = s*t / (1 + (s-1)*t)``:

* ``uniform``: t ~ U(0, 1].
* ``sigmoid``: t = sigmoid(sigmoid_scale * N(0, 1)).
* ``shift``: as ``sigmoid``; it exists under its own name for compatibility, and is where a shift is
  usually given.
* ``flux_shift``: as ``sigmoid``, then shifted by s = exp(mu), mu linear from (256 tokens, 0.5) to
  (4096 tokens, 1.15), evaluated at the token count of one latent frame after patching
  (``(h // patch_h) * (w // patch_w)``).
* ``logsnr``: logsnr ~ N(logit_mean, logit_std), t = sigmoid(-logsnr / 2).
* ``sigma``: u from the ``--weighting_scheme`` density (``logit_normal``: sigmoid(N(logit_mean, logit_std));
  ``mode``: ``1 - u - mode_scale * (cos(pi*u/2)^2 - 1 + u)``; otherwise U(0, 1)), mapped onto a table of
  1000 discrete levels ``1000/1000, 999/1000, ..., 1/1000`` by index ``floor(u * 1000)``. Like the reference,
  index 0 is the noisiest entry, so a positive logit_mean favours *low* noise in this mode.

``--discrete_flow_shift`` applies the shift to every mode except ``flux_shift``: to the drawn t in
``uniform``, ``sigmoid``, ``shift`` and ``logsnr``, and to every entry of the discrete table in ``sigma``.
(The reference ignores it in ``sigma`` mode, its default, because its scheduler drops the ``shift``
argument; that silently made the option a no-op.) ``flux_shift`` derives its shift from the resolution so
that training matches the resolution-dependent schedule of inference; there the option is ignored and a
warning says so when it is not 1.

``--min_timestep/--max_timestep`` (0..1000) always bound the timestep the model sees (after any shift).
By default the draw is rescaled linearly into the window (in ``sigma`` mode: u is spread over the table
entries inside the window); with ``--preserve_distribution_shape`` draws outside the window are rejected
and redrawn, keeping the distribution's shape within it. (The reference applies the bounds to the table
*index* in ``sigma`` mode, which mirrors the window: min 0 / max 500 trained timesteps 501..1000.)

Timesteps are ``sigma * 1000`` with no offset. The reference adds 1 in the continuous modes (range 1..1001),
which disagrees with its own inference (``sigma * 1000``) and with its ``sigma`` mode; that offset is not
reproduced here.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import Any

import attrs
import torch

from tuner_core.config.train_options import TIMESTEP_SAMPLING
from tuner_core.errors import ConfigError

logger = logging.getLogger(__name__)

TIMESTEP_SAMPLING_MODES = TIMESTEP_SAMPLING
NUM_TRAIN_TIMESTEPS = 1000
#: Anchors of the FLUX resolution-dependent shift: (tokens, mu) at the low and high end.
FLUX_SHIFT_LOW = (256, 0.5)
FLUX_SHIFT_HIGH = (4096, 1.15)
#: Lowest sigma a continuous mode returns; keeps sigma in (0, 1] so x_t never equals the clean latent.
SIGMA_FLOOR = 1e-6
#: Range of ``mode_scale`` for which the SD3 mode density is monotone and stays within [0, 1].
MODE_SCALE_RANGE = (-1.0, 1.0 / (math.pi / 2 - 1))
#: Rejection sampling gives up after this many rounds (each draws at least 256 candidates).
MAX_REJECTION_ROUNDS = 100


def shift_sigmas(sigmas: torch.Tensor, shift: float) -> torch.Tensor:
    """Apply the flow-matching sigma shift ``s*t / (1 + (s-1)*t)``; s > 1 moves mass towards noise."""
    if shift == 1.0:
        return sigmas
    return (shift * sigmas) / (1 + (shift - 1) * sigmas)


def flux_shift_for_tokens(num_tokens: int) -> float:
    """The FLUX shift ``exp(mu)`` for ``num_tokens`` image tokens, mu linear through the two anchors."""
    (x1, y1), (x2, y2) = FLUX_SHIFT_LOW, FLUX_SHIFT_HIGH
    mu = y1 + (y2 - y1) / (x2 - x1) * (num_tokens - x1)
    return math.exp(mu)


def sigma_table(shift: float = 1.0) -> torch.Tensor:
    """The 1000 discrete noise levels of ``sigma`` mode, noisiest first, shifted by ``shift`` (float64)."""
    levels = torch.arange(NUM_TRAIN_TIMESTEPS, 0, -1, dtype=torch.float64) / NUM_TRAIN_TIMESTEPS
    return shift_sigmas(levels, shift)


def density_samples(
    weighting_scheme: str,
    batch_size: int,
    *,
    logit_mean: float = 0.0,
    logit_std: float = 1.0,
    mode_scale: float = 1.29,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Draw ``batch_size`` values u in [0, 1] from the SD3 density of ``weighting_scheme`` (float32).

    ``logit_normal``: sigmoid(N(logit_mean, logit_std)); ``mode``: the SD3 mode density with ``mode_scale``;
    anything else: U(0, 1). Draws happen on the generator's device (CPU without one).
    """
    device = generator.device if generator is not None else torch.device("cpu")
    if weighting_scheme == "logit_normal":
        normal = torch.normal(logit_mean, logit_std, size=(batch_size,), generator=generator, device=device)
        return torch.sigmoid(normal)
    u = torch.rand((batch_size,), generator=generator, device=device)
    if weighting_scheme == "mode":
        return 1 - u - mode_scale * (torch.cos(math.pi * u / 2) ** 2 - 1 + u)
    return u


@attrs.frozen(kw_only=True)
class NoisyInput:
    """One batch's flow-matching input.

    :param sigmas: noise levels in (0, 1], float32, shape (B,), on the latents' device.
    :param timesteps: what the model is fed: ``sigmas * 1000``, float32, shape (B,).
    :param noisy_latents: ``(1 - sigma) * latents + sigma * noise`` (float32 for half-precision latents,
        by type promotion with the float32 sigmas).
    :param noise: the noise used; the velocity target is ``noise - latents``.
    """

    sigmas: torch.Tensor
    timesteps: torch.Tensor
    noisy_latents: torch.Tensor
    noise: torch.Tensor


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


@attrs.frozen(kw_only=True)
class NoiseLevels:
    """Draws flow-matching noise levels for training batches; built once per run (see the module docstring).

    Field names are the ``tuner train`` option names. ``patch_size`` is the architecture's spatial patch
    (height, width) in latent pixels, used by ``flux_shift`` to count tokens.
    """

    timestep_sampling: str = "sigma"
    discrete_flow_shift: float = 1.0
    sigmoid_scale: float = 1.0
    weighting_scheme: str = "none"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    mode_scale: float = 1.29
    min_timestep: float | None = None
    max_timestep: float | None = None
    preserve_distribution_shape: bool = False
    patch_size: tuple[int, int] = (2, 2)

    def __attrs_post_init__(self) -> None:
        _check(
            self.timestep_sampling in TIMESTEP_SAMPLING_MODES,
            f"--timestep_sampling must be one of {', '.join(TIMESTEP_SAMPLING_MODES)}; "
            f"got {self.timestep_sampling!r}",
        )
        _check(
            self.discrete_flow_shift > 0, f"--discrete_flow_shift must be > 0, got {self.discrete_flow_shift}"
        )
        _check(self.sigmoid_scale > 0, f"--sigmoid_scale must be > 0, got {self.sigmoid_scale}")
        _check(self.logit_std > 0, f"--logit_std must be > 0, got {self.logit_std}")
        low, high = self.timestep_window
        _check(
            0 <= low < high <= NUM_TRAIN_TIMESTEPS,
            f"--min_timestep ({low:g}) must be below --max_timestep ({high:g}), both within 0..1000",
        )
        _check(
            len(self.patch_size) == 2 and all(int(p) >= 1 for p in self.patch_size),
            f"the architecture's patch size must be two positive integers, got {self.patch_size}",
        )
        if self.timestep_sampling == "sigma":
            lo, hi = MODE_SCALE_RANGE
            _check(
                self.weighting_scheme != "mode" or lo <= self.mode_scale <= hi,
                f"--mode_scale must be within [{lo:g}, {hi:.4f}] for the 'mode' weighting scheme "
                f"(outside it the density is not monotone), got {self.mode_scale}",
            )
            _check(
                bool(self._table_window().numel()),
                f"no discrete noise level lies between --min_timestep {low:g} and --max_timestep {high:g} "
                f"with --discrete_flow_shift {self.discrete_flow_shift:g}; widen the window",
            )
        if self.timestep_sampling == "flux_shift" and self.discrete_flow_shift != 1.0:
            logger.warning(
                "--discrete_flow_shift %g is ignored with --timestep_sampling flux_shift, which derives its "
                "shift from the latent resolution; use --timestep_sampling shift for a fixed shift",
                self.discrete_flow_shift,
            )

    @classmethod
    def from_options(cls, options: Any, *, patch_size: tuple[int, int] = (2, 2)) -> NoiseLevels:
        """Build from validated ``TrainOptions`` (or anything with the same attribute names)."""
        names = [f.name for f in attrs.fields(cls) if f.name != "patch_size"]
        return cls(**{name: getattr(options, name) for name in names}, patch_size=tuple(patch_size))

    @property
    def timestep_window(self) -> tuple[float, float]:
        """The (min, max) timestep on the 0..1000 scale, defaults filled in."""
        low = 0.0 if self.min_timestep is None else float(self.min_timestep)
        high = float(NUM_TRAIN_TIMESTEPS) if self.max_timestep is None else float(self.max_timestep)
        return low, high

    @property
    def _bounded(self) -> bool:
        return self.timestep_window != (0.0, float(NUM_TRAIN_TIMESTEPS))

    def shift_for(self, latent_shape: Sequence[int]) -> float:
        """The sigma shift applied to a batch of latents of ``latent_shape`` (last two dims: h, w)."""
        if self.timestep_sampling == "flux_shift":
            height, width = int(latent_shape[-2]), int(latent_shape[-1])
            tokens = (height // int(self.patch_size[0])) * (width // int(self.patch_size[1]))
            return flux_shift_for_tokens(tokens)
        return float(self.discrete_flow_shift)

    def sample_sigmas(
        self, latent_shape: Sequence[int], *, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Draw one sigma per batch element for latents of ``latent_shape`` (B, ..., h, w).

        Returns float32, shape (B,), values in (0, 1], on the generator's device (CPU without one).
        Deterministic for a given generator state.
        """
        batch_size = int(latent_shape[0])
        if self.timestep_sampling == "sigma":
            sigmas = self._sample_table(batch_size, generator)
        else:
            sigmas = self._sample_continuous(batch_size, self.shift_for(latent_shape), generator)
        return sigmas.float()

    def noisy_input(
        self,
        latents: torch.Tensor,
        *,
        generator: torch.Generator | None = None,
        noise: torch.Tensor | None = None,
    ) -> NoisyInput:
        """Draw sigmas (and noise, unless given) for ``latents`` (B, C, [F,] H, W) and mix them.

        Noise is drawn on the generator's device in float32 and moved to the latents, so a CPU generator
        gives the same batch on any device; pass a generator on the latents' device to avoid the copy.
        """
        sigmas = self.sample_sigmas(latents.shape, generator=generator).to(latents.device)
        if noise is None:
            device = generator.device if generator is not None else latents.device
            noise = torch.randn(latents.shape, generator=generator, device=device, dtype=torch.float32)
            noise = noise.to(device=latents.device, dtype=latents.dtype)
        elif noise.shape != latents.shape:
            raise ValueError(f"noise shape {tuple(noise.shape)} differs from latents {tuple(latents.shape)}")
        mix = sigmas.view(-1, *([1] * (latents.ndim - 1)))
        noisy = (1 - mix) * latents + mix * noise
        return NoisyInput(
            sigmas=sigmas, timesteps=sigmas * NUM_TRAIN_TIMESTEPS, noisy_latents=noisy, noise=noise
        )

    # -- continuous modes ------------------------------------------------------------------------------

    def _draw_continuous(self, count: int, shift: float, generator: torch.Generator | None) -> torch.Tensor:
        device = generator.device if generator is not None else torch.device("cpu")
        mode = self.timestep_sampling
        if mode == "uniform":
            # 1 - U[0, 1) lies in (0, 1], so sigma 0 (a clean input) is never drawn.
            t = 1 - torch.rand((count,), generator=generator, device=device)
        elif mode == "logsnr":
            logsnr = torch.normal(
                self.logit_mean, self.logit_std, size=(count,), generator=generator, device=device
            )
            t = torch.sigmoid(-logsnr / 2)
        else:  # sigmoid, shift, flux_shift
            t = torch.sigmoid(self.sigmoid_scale * torch.randn((count,), generator=generator, device=device))
        return shift_sigmas(t, shift)

    def _sample_continuous(
        self, batch_size: int, shift: float, generator: torch.Generator | None
    ) -> torch.Tensor:
        low, high = (v / NUM_TRAIN_TIMESTEPS for v in self.timestep_window)
        if not self._bounded:
            sigmas = self._draw_continuous(batch_size, shift, generator)
        elif not self.preserve_distribution_shape:
            sigmas = self._draw_continuous(batch_size, shift, generator) * (high - low) + low
        else:
            sigmas = self._reject(batch_size, lambda n: self._draw_continuous(n, shift, generator), low, high)
        return sigmas.clamp(SIGMA_FLOOR, 1.0)

    # -- discrete table (sigma mode) -------------------------------------------------------------------

    def _table_window(self) -> torch.Tensor:
        """Indices of the shifted table whose timestep lies inside the window (contiguous, ascending)."""
        timesteps = sigma_table(self.discrete_flow_shift) * NUM_TRAIN_TIMESTEPS
        low, high = self.timestep_window
        # A small tolerance so that integer bounds include the level they name despite float rounding.
        inside = (timesteps >= low - 1e-6) & (timesteps <= high + 1e-6)
        return inside.nonzero().flatten()

    def _density(self, count: int, generator: torch.Generator | None) -> torch.Tensor:
        return density_samples(
            self.weighting_scheme,
            count,
            logit_mean=self.logit_mean,
            logit_std=self.logit_std,
            mode_scale=self.mode_scale,
            generator=generator,
        )

    def _sample_table(self, batch_size: int, generator: torch.Generator | None) -> torch.Tensor:
        table = sigma_table(self.discrete_flow_shift)
        if self._bounded and not self.preserve_distribution_shape:
            window = self._table_window()
            first, count = int(window[0]), int(window.numel())
            u = self._density(batch_size, generator).cpu().double()
            index = (first + (u * count).floor().long()).clamp(first, first + count - 1)
            return table[index].to(generator.device if generator is not None else "cpu")

        def draw(n: int) -> torch.Tensor:
            u = self._density(n, generator)
            index = (u * NUM_TRAIN_TIMESTEPS).floor().long().clamp(0, NUM_TRAIN_TIMESTEPS - 1)
            return table.to(u.device)[index]

        if not self._bounded:
            return draw(batch_size)
        low, high = (v / NUM_TRAIN_TIMESTEPS for v in self.timestep_window)
        return self._reject(batch_size, draw, low - 1e-9, high + 1e-9)

    # -- rejection ---------------------------------------------------------------------------------------

    def _reject(
        self, batch_size: int, draw: Callable[[int], torch.Tensor], low: float, high: float
    ) -> torch.Tensor:
        """Keep the first ``batch_size`` draws inside [low, high], drawing candidates in rounds."""
        chunk = max(4 * batch_size, 256)
        kept: list[torch.Tensor] = []
        have = 0
        for _ in range(MAX_REJECTION_ROUNDS):
            candidates = draw(chunk)
            accepted = candidates[(candidates >= low) & (candidates <= high)]
            kept.append(accepted)
            have += int(accepted.numel())
            if have >= batch_size:
                return torch.cat(kept)[:batch_size]
        window = self.timestep_window
        raise ConfigError(
            f"--preserve_distribution_shape: only {have} of {chunk * MAX_REJECTION_ROUNDS} draws fell between "
            f"--min_timestep {window[0]:g} and --max_timestep {window[1]:g} with --timestep_sampling "
            f"{self.timestep_sampling}; widen the window or drop --preserve_distribution_shape"
        )
