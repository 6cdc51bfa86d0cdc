"""Decode a latent video chunk by chunk in time order, blending chunk overlaps, and stream out the frames.

The reference (musubi-tuner ``decode_latent``, the same chunks the official demo decodes as it generates)
decodes overlapping chunks of the time-ordered latents: the first takes ``2W + 1`` latents and the
next starts ``W + 1`` later; each later one takes ``2W`` and the next starts ``W`` later; the last is
cut at the end. Consecutive chunks share W latents, and their pixels are blended over ``4W - 3`` frames
with a linear ramp (:func:`soft_append`). The reference decodes all chunks and folds them from the
time-last one backwards; each frame is blended at most once (a chunk's two overlaps never meet), so
folding forwards gives the same frames, which lets this decoder hand every frame to a sink as soon as no
later chunk can change it. It holds one decoded chunk and one overlap of pixels at a time.

Inverted-order generation makes the time-first latents last, so its video can only be decoded once all
sections are done; :class:`TimeOrderedFeed` reorders section results and streams F1 videos right away.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from tuner_framepack.generation.section_count import video_latent_count
from tuner_framepack.generation.section_loop import SectionResult
from tuner_framepack.sections import VAE_TIME_STRIDE

#: ``decode(latents (B, C, T, h, w)) -> pixels (B, 3, 4T - 3, H, W)``, e.g. ``vae_decode`` bound to a VAE.
Decode = Callable[[torch.Tensor], torch.Tensor]
#: Receives consecutive runs of finished pixel frames ``(B, 3, n, H, W)`` in time order.
FrameSink = Callable[[torch.Tensor], None]


def overlap_frames(latent_window_size: int) -> int:
    """Pixel frames two consecutive chunks share and blend: ``4W - 3`` (33 at W=9)."""
    return latent_window_size * VAE_TIME_STRIDE - 3


def decode_chunk_spans(sections: int, latent_window_size: int) -> list[tuple[int, int]]:
    """The ``[start, stop)`` latent spans the reference decodes, in time order (first chunk first)."""
    total = video_latent_count(sections, latent_window_size)
    spans, start = [], 0
    for chunk in range(sections):
        length = 2 * latent_window_size + (1 if chunk == 0 else 0)
        spans.append((start, min(start + length, total)))
        start += latent_window_size + (1 if chunk == 0 else 0)
    return spans


def soft_append(earlier: torch.Tensor, later: torch.Tensor, overlap: int) -> torch.Tensor:
    """Join two pixel runs ``(B, C, T, H, W)`` whose last/first ``overlap`` frames show the same time.

    Over the overlap the weight of ``earlier`` falls linearly from 1 to 0 (in ``earlier``'s dtype), as the
    reference's ``soft_append_bcthw``; the result has ``len(earlier) + len(later) - overlap`` frames.
    """
    if overlap <= 0:
        return torch.cat([earlier, later], dim=2)
    return torch.cat(
        [
            earlier[:, :, :-overlap],
            _blend(earlier[:, :, -overlap:], later[:, :, :overlap]),
            later[:, :, overlap:],
        ],
        dim=2,
    )


def _blend(earlier_tail: torch.Tensor, later_head: torch.Tensor) -> torch.Tensor:
    """The overlap frames: ``w * earlier + (1 - w) * later`` with ``w`` = linspace(1, 0), in the reference's order."""
    overlap = earlier_tail.shape[2]
    weights = torch.linspace(1, 0, overlap, dtype=earlier_tail.dtype, device=earlier_tail.device).view(
        1, 1, -1, 1, 1
    )
    return (weights * earlier_tail + (1 - weights) * later_head).to(earlier_tail)


class StreamedDecoder:
    """Feed latents in time order; finished frames go to ``sink`` chunk by chunk.

    :param decode: the VAE decode; it receives one chunk (at most ``2W + 1`` latents) per call.
    :param sink: receives each run of final frames, in time order (slices of a decoded chunk: copy them
        to keep them, write them out to let them go).
    :param sections: sections of the video; exactly ``S * W + 1`` latents must be fed.
    :param pixel_device: where decoded frames are moved (and blended), the CPU as in the reference.
    """

    def __init__(
        self,
        decode: Decode,
        sink: FrameSink,
        *,
        sections: int,
        latent_window_size: int,
        pixel_device: torch.device | str = "cpu",
    ) -> None:
        self._decode = decode
        self._sink = sink
        self._overlap = overlap_frames(latent_window_size)
        self._spans = decode_chunk_spans(sections, latent_window_size)
        self._total = video_latent_count(sections, latent_window_size)
        self._pixel_device = pixel_device
        self._latents: torch.Tensor | None = None  # fed latents from time index self._latents_start on
        self._latents_start = 0
        self._fed = 0
        self._next_chunk = 0
        self._pending: torch.Tensor | None = None  # the last chunk's tail, until the next chunk blends it
        self.frames_written = 0

    @property
    def done(self) -> bool:
        """Whether every chunk has been decoded and written."""
        return self._next_chunk == len(self._spans)

    def feed(self, latents: torch.Tensor) -> None:
        """Add the next latents ``(B, C, n, h, w)`` in time order and decode every chunk they complete."""
        if self._fed + latents.shape[2] > self._total:
            raise ValueError(
                f"fed {self._fed + latents.shape[2]} latent frames to a decoder of a {self._total}-latent video"
            )
        self._latents = latents if self._latents is None else torch.cat([self._latents, latents], dim=2)
        self._fed += latents.shape[2]
        while not self.done and self._spans[self._next_chunk][1] <= self._fed:
            self._decode_next()

    def finish(self) -> int:
        """Check that the whole video was fed and written; returns the number of frames written."""
        if not self.done:
            raise ValueError(f"only {self._fed} of {self._total} latent frames were fed to the decoder")
        return self.frames_written

    def _decode_next(self) -> None:
        """Decode the next chunk, write what is final, keep its tail for the next chunk's blend."""
        start, stop = self._spans[self._next_chunk]
        chunk = self._latents[:, :, start - self._latents_start : stop - self._latents_start]
        pixels = self._decode(chunk).to(self._pixel_device)
        expected = (stop - start - 1) * VAE_TIME_STRIDE + 1
        if pixels.shape[2] != expected:
            raise ValueError(
                f"decode gave {pixels.shape[2]} frames for {stop - start} latents, expected {expected}"
            )
        self._next_chunk += 1
        if self._pending is not None:
            self._write(_blend(self._pending, pixels[:, :, : self._overlap]))
            pixels = pixels[:, :, self._overlap :]
        if self.done:
            self._write(pixels)
            self._pending = self._latents = None
            return
        self._write(pixels[:, :, : pixels.shape[2] - self._overlap])
        # A copy, so the rest of this chunk's pixels can be freed while the next one decodes.
        self._pending = pixels[:, :, pixels.shape[2] - self._overlap :].clone()
        # Latents before the next chunk are never decoded again.
        next_start = self._spans[self._next_chunk][0]
        self._latents = self._latents[:, :, next_start - self._latents_start :]
        self._latents_start = next_start

    def _write(self, frames: torch.Tensor) -> None:
        """Hand a non-empty run of final frames to the sink."""
        if frames.shape[2] > 0:
            self._sink(frames)
            self.frames_written += frames.shape[2]


def decode_streamed(
    latents: torch.Tensor,
    decode: Decode,
    sink: FrameSink,
    *,
    latent_window_size: int,
    pixel_device: torch.device | str = "cpu",
) -> int:
    """Decode a whole latent video ``(B, C, S*W+1, h, w)`` chunk by chunk into ``sink``; returns the frames."""
    sections, remainder = divmod(latents.shape[2] - 1, latent_window_size)
    if sections < 1 or remainder:
        raise ValueError(
            f"a latent video of {latents.shape[2]} frames is not 1 + whole sections of {latent_window_size} latents"
        )
    decoder = StreamedDecoder(
        decode, sink, sections=sections, latent_window_size=latent_window_size, pixel_device=pixel_device
    )
    decoder.feed(latents)
    return decoder.finish()


class TimeOrderedFeed:
    """An ``on_section`` consumer that passes section latents on in time order.

    Results that arrive early (all but section 0's, in the inverted layout) wait until every earlier
    latent has arrived; in the F1 layout each result is passed on at once.

    :param target: receives latents ``(B, C, n, h, w)`` in time order, e.g. :meth:`StreamedDecoder.feed`.
    """

    def __init__(self, target: Callable[[torch.Tensor], None]) -> None:
        self._target = target
        self._next_time = 0
        self._waiting: dict[int, torch.Tensor] = {}

    def __call__(self, result: SectionResult) -> None:
        """Take one section's result; pass on every run now contiguous with what was passed before."""
        self._waiting[result.time_start] = result.latents
        while self._next_time in self._waiting:
            latents = self._waiting.pop(self._next_time)
            self._next_time += latents.shape[2]
            self._target(latents)
