"""Streamed per-chunk decoding equals the reference's decode-all-then-soft-append, in bounded memory.

The reference paths are transcribed here on their own: musubi-tuner's ``decode_latent`` (chunks cut from
the start, decoded time-last first and folded backwards with ``soft_append_bcthw``) and the official
demo's decode-as-you-generate of the inverted layout (prepending each section's pixels).
"""

from __future__ import annotations

import pytest
import torch

from tuner_framepack.generation import (
    SectionResult,
    StreamedDecoder,
    TimeOrderedFeed,
    decode_chunk_spans,
    decode_streamed,
    generation_plan,
    overlap_frames,
)
from tuner_framepack.testing.tiny_encoders import build_tiny_vae

C, H, W = 16, 2, 3


def reference_soft_append(history: torch.Tensor, current: torch.Tensor, overlap: int) -> torch.Tensor:
    weights = torch.linspace(1, 0, overlap, dtype=history.dtype, device=history.device).view(1, 1, -1, 1, 1)
    blended = weights * history[:, :, -overlap:] + (1 - weights) * current[:, :, :overlap]
    return torch.cat([history[:, :, :-overlap], blended, current[:, :, overlap:]], dim=2).to(history)


def reference_decode_all(latent: torch.Tensor, sections: int, window: int, decode) -> torch.Tensor:
    num_frames = window * 4 - 3
    chunks, index = [], 0
    for i in range(sections - 1, -1, -1):
        is_last_section = i == sections - 1
        generated = (num_frames + 3) // 4 + (1 if is_last_section else 0)
        length = (window * 2 + 1) if is_last_section else (window * 2)
        chunk = latent[:, :, index : index + length]
        if chunk.shape[2] > 0:
            chunks.append(chunk)
        index += generated
    pixels = None
    for chunk in chunks[::-1]:
        current = decode(chunk)
        pixels = current if pixels is None else reference_soft_append(current, pixels, window * 4 - 3)
    return pixels


def demo_decode_as_generated(latent: torch.Tensor, sections: int, window: int, decode) -> torch.Tensor:
    """demo_gradio.py: after each inverted section, decode the newest chunk and prepend it."""
    pixels, total = None, 0
    for section_index in range(sections - 1, -1, -1):
        is_last = section_index == 0
        total += window + (1 if is_last else 0)
        real = latent[:, :, latent.shape[2] - total :]
        if pixels is None:
            pixels = decode(real)
        else:
            length = window * 2 + (1 if is_last else 0)
            pixels = reference_soft_append(decode(real[:, :, :length]), pixels, window * 4 - 3)
    return pixels


def fake_decode(latents: torch.Tensor) -> torch.Tensor:
    """A causal, chunk-dependent stand-in for the VAE: latent 0 -> 1 frame, each later one -> 4 frames
    mixing it with its predecessor; channels projected to RGB, 2x spatial upsampling, a tanh."""
    mix = torch.linspace(-1, 1, 3 * latents.shape[1]).view(3, -1)
    rgb = torch.einsum("oc,bcthw->bothw", mix, latents.float())
    frames = [rgb[:, :, :1]]
    for t in range(1, rgb.shape[2]):
        for j in range(1, 5):
            frames.append(j / 4 * rgb[:, :, t : t + 1] + (1 - j / 4) * rgb[:, :, t - 1 : t])
    pixels = torch.tanh(torch.cat(frames, dim=2) / 50 + 0.1 * torch.arange(len(frames)).view(1, 1, -1, 1, 1))
    return pixels.repeat_interleave(2, dim=3).repeat_interleave(2, dim=4)


class Recorder:
    """A decode wrapper and frame sink that record call sizes and how many frames are held."""

    def __init__(self, decode) -> None:
        self.decode_inner, self.decoded, self.pieces = decode, [], []

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        self.decoded.append(latents.shape[2])
        return self.decode_inner(latents)

    def sink(self, frames: torch.Tensor) -> None:
        self.pieces.append(frames.clone())

    @property
    def video(self) -> torch.Tensor:
        return torch.cat(self.pieces, dim=2)


def random_video(sections: int, window: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return 20 * torch.randn(1, C, sections * window + 1, H, W, generator=g)


def section_results(video: torch.Tensor, sections: int, window: int, f1: bool) -> list[SectionResult]:
    """The loop's results for a known latent video, in that layout's generation order."""
    results = []
    for step in generation_plan(sections, window, f1=f1).steps:
        stop = 1 + (step.section_index + 1) * window
        results.append(SectionResult(step, video[:, :, step.time_start : stop], step.time_start))
    return results


@pytest.mark.parametrize("f1", [False, True], ids=["inverted", "f1"])
@pytest.mark.parametrize("window", [9, 3, 1])
@pytest.mark.parametrize("sections", [1, 2, 3, 4, 5])
def test_streamed_decode_equals_the_reference_decode(sections: int, window: int, f1: bool) -> None:
    video = random_video(sections, window)
    expected = reference_decode_all(video, sections, window, fake_decode)
    assert expected.shape[2] == 4 * sections * window + 1
    if not f1:
        assert torch.equal(demo_decode_as_generated(video, sections, window, fake_decode), expected)
    recorder = Recorder(fake_decode)
    decoder = StreamedDecoder(recorder.decode, recorder.sink, sections=sections, latent_window_size=window)
    feed = TimeOrderedFeed(decoder.feed)
    written = []
    for result in section_results(video, sections, window, f1):
        feed(result)
        written.append(decoder.frames_written)
    assert decoder.finish() == expected.shape[2]
    assert torch.equal(recorder.video, expected)
    # bounded: one chunk per decode call, every piece at most one chunk of frames
    assert max(recorder.decoded) <= 2 * window + 1 and len(recorder.decoded) == sections
    assert max(p.shape[2] for p in recorder.pieces) <= 8 * window + 1
    if f1 and sections > 1:
        assert written[1] > 0 and written == sorted(written)  # frames leave as sections are generated
    if not f1:
        assert written[:-1] == [0] * (sections - 1)  # time 0 is generated last


def test_tiny_vae_streamed_equals_reference() -> None:
    vae = build_tiny_vae(seed=5).eval()

    def decode(latents: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return vae.decode(latents / 0.476986).sample

    sections, window = 3, 2
    video = random_video(sections, window, seed=3) / 20
    expected = reference_decode_all(video, sections, window, decode)
    recorder = Recorder(decode)
    assert decode_streamed(video, recorder.decode, recorder.sink, latent_window_size=window) == 25
    assert torch.equal(recorder.video, expected)
    assert recorder.decoded == [5, 4, 2]


def test_chunk_spans_and_overlap() -> None:
    assert overlap_frames(9) == 33
    assert decode_chunk_spans(4, 9) == [(0, 19), (10, 28), (19, 37), (28, 37)]
    assert decode_chunk_spans(1, 9) == [(0, 10)]
    assert decode_chunk_spans(2, 9) == [(0, 19), (10, 19)]


def test_decoder_refuses_wrong_amounts_of_latents() -> None:
    decoder = StreamedDecoder(fake_decode, lambda f: None, sections=2, latent_window_size=2)
    decoder.feed(torch.zeros(1, C, 3, H, W))
    with pytest.raises(ValueError, match="only 3 of 5"):
        decoder.finish()
    with pytest.raises(ValueError, match="fed 6 latent frames"):
        decoder.feed(torch.zeros(1, C, 3, H, W))
    with pytest.raises(ValueError, match="whole sections"):
        decode_streamed(torch.zeros(1, C, 6, H, W), fake_decode, lambda f: None, latent_window_size=2)
    with pytest.raises(ValueError, match="expected 17"):
        decode_streamed(torch.zeros(1, C, 5, H, W), lambda x: x, lambda f: None, latent_window_size=2)
