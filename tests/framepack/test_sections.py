"""FramePack section arithmetic and per-section context against the reference's documented layouts.

Latents are built so that every value names its frame: channel ``c`` of latent frame ``t`` holds
``t + 1 + 1000 * c``. A zero therefore always means "no latent here", never latent 0.
"""

from __future__ import annotations

import pytest
import torch

from tuner_core import ConfigError, DataError
from tuner_framepack.sections import (
    ClipTooShortError,
    clip_sections,
    f1_indices,
    f1_sections,
    inverted_indices,
    inverted_latent_paddings,
    inverted_sections,
    latent_frame_count,
    minimum_frame_count,
    one_frame_section,
    plan_sections,
)

CHANNELS, HEIGHT, WIDTH = 16, 2, 3


def frame_coded_latents(latent_frames: int) -> torch.Tensor:
    """``(16, F, 2, 3)`` latents whose values encode (channel, frame)."""
    frames = torch.arange(latent_frames, dtype=torch.float32).view(1, latent_frames, 1, 1) + 1
    channels = 1000 * torch.arange(CHANNELS, dtype=torch.float32).view(CHANNELS, 1, 1, 1)
    return (frames + channels).expand(CHANNELS, latent_frames, HEIGHT, WIDTH).clone()


def frames_of(latents: torch.Tensor) -> list[int]:
    """Which latent frame each slot holds (-1 for zeros), checked to be consistent over channels and pixels."""
    channel_offsets = 1000 * torch.arange(latents.shape[0], dtype=latents.dtype).view(-1, 1, 1, 1)
    zero = latents == 0
    decoded = torch.where(zero, torch.zeros_like(latents), latents - channel_offsets)
    result = []
    for t in range(latents.shape[1]):
        if bool(zero[:, t].all()):
            result.append(-1)
            continue
        values = decoded[:, t].unique()
        assert values.numel() == 1, f"slot {t} mixes frames {values.tolist()}"
        result.append(int(values.item()) - 1)
    return result


def span(start: int, length: int) -> list[int]:
    return list(range(start, start + length))


# -- arithmetic -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("frames", "latent_frames", "sections", "aligned_frames"),
    [
        (37, 10, 1, 37),
        (73, 19, 2, 73),
        (109, 28, 3, 109),
        (145, 37, 4, 145),
        (181, 46, 5, 181),
        (217, 55, 6, 217),
    ],
)
def test_valid_lengths_need_no_trimming(frames, latent_frames, sections, aligned_frames):
    plan = plan_sections(frames, 9)
    assert (plan.latent_frames, plan.sections, plan.aligned_frame_count) == (
        latent_frames,
        sections,
        aligned_frames,
    )
    assert plan.aligned_latent_frames == sections * 9 + 1
    assert not plan.trims_frames


@pytest.mark.parametrize(("frames", "aligned"), [(41, 37), (77, 73), (149, 145), (150, 145), (72, 37)])
def test_other_lengths_trim_to_whole_sections(frames, aligned):
    plan = plan_sections(frames, 9)
    assert plan.aligned_frame_count == aligned
    assert plan.trims_frames


def test_window_size_changes_the_arithmetic():
    plan = plan_sections(81, 5)  # 21 latents -> 4 sections of 5
    assert (plan.latent_frames, plan.sections, plan.aligned_latent_frames, plan.aligned_frame_count) == (
        21,
        4,
        21,
        81,
    )
    assert latent_frame_count(1) == 1 and latent_frame_count(5) == 2 and latent_frame_count(8) == 2
    assert minimum_frame_count(9) == 37 and minimum_frame_count(5) == 21


@pytest.mark.parametrize(("frames", "window", "minimum"), [(33, 9, 37), (36, 9, 37), (17, 5, 21), (1, 9, 37)])
def test_clip_shorter_than_one_section_states_the_minimum(frames, window, minimum):
    with pytest.raises(ClipTooShortError, match=rf"at least {minimum} frames") as caught:
        plan_sections(frames, window)
    assert isinstance(caught.value, DataError)
    assert f"{frames} frames" in str(caught.value)


@pytest.mark.parametrize("window", [0, -3, 2.5, True])
def test_bad_window_size_is_a_config_error(window):
    with pytest.raises(ConfigError, match="fp_latent_window_size"):
        plan_sections(73, window)


@pytest.mark.parametrize(
    ("sections", "paddings"),
    [(1, [0]), (2, [1, 0]), (3, [2, 1, 0]), (4, [3, 2, 1, 0]), (5, [3, 2, 2, 1, 0]), (6, [3, 2, 2, 2, 1, 0])],
)
def test_inverted_padding_schedule(sections, paddings):
    assert inverted_latent_paddings(sections) == paddings


# -- indices ----------------------------------------------------------------------------------------


def test_inverted_indices_match_the_documented_examples():
    p0 = inverted_indices(0, 9)
    assert p0.latent_indices.tolist() == span(1, 9)
    assert p0.clean_latent_indices.tolist() == [0, 10]
    assert p0.clean_latent_2x_indices.tolist() == [11, 12]
    assert p0.clean_latent_4x_indices.tolist() == span(13, 16)
    p3 = inverted_indices(3, 9)
    assert p3.latent_indices.tolist() == span(28, 9)
    assert p3.clean_latent_indices.tolist() == [0, 37]
    assert p3.clean_latent_2x_indices.tolist() == [38, 39]
    assert p3.clean_latent_4x_indices.tolist() == span(40, 16)
    for indices in (p0, p3):
        assert all(
            t.dtype == torch.int64
            for t in (
                indices.latent_indices,
                indices.clean_latent_indices,
                indices.clean_latent_2x_indices,
                indices.clean_latent_4x_indices,
            )
        )


def test_f1_indices_match_the_documented_split():
    indices = f1_indices(9)
    assert indices.clean_latent_indices.tolist() == [0, 19]
    assert indices.clean_latent_4x_indices.tolist() == span(1, 16)
    assert indices.clean_latent_2x_indices.tolist() == [17, 18]
    assert indices.latent_indices.tolist() == span(20, 9)
    assert f1_indices(5).latent_indices.tolist() == span(20, 5)


# -- inverted layout --------------------------------------------------------------------------------


@pytest.mark.parametrize("frames", [37, 73, 145, 217])
def test_inverted_sections_targets_indices_and_future_history(frames):
    window = 9
    plan = plan_sections(frames, window)
    latents = frame_coded_latents(plan.latent_frames)
    contexts = inverted_sections(latents, window)
    assert [c.section_index for c in contexts] == list(range(plan.sections))
    # Paddings are assigned in inference order: the time-last section gets the first padding.
    padding_of = dict(zip(range(plan.sections - 1, -1, -1), inverted_latent_paddings(plan.sections)))
    for context in contexts:
        k = context.section_index
        assert context.latents.shape == (CHANNELS, window, HEIGHT, WIDTH)
        assert context.clean_latents.shape == (CHANNELS, 2, HEIGHT, WIDTH)
        assert context.clean_latents_2x.shape == (CHANNELS, 2, HEIGHT, WIDTH)
        assert context.clean_latents_4x.shape == (CHANNELS, 16, HEIGHT, WIDTH)
        assert frames_of(context.latents) == span(1 + k * window, window)
        # History is the ground-truth future right after the target, zeros past the clip's end.
        future_start = 1 + (k + 1) * window
        future = [t if t < plan.latent_frames else -1 for t in span(future_start, 19)]
        assert frames_of(context.clean_latents) == [0, future[0]]
        assert frames_of(context.clean_latents_2x) == future[1:3]
        assert frames_of(context.clean_latents_4x) == future[3:19]
        p = padding_of[k] * window
        assert context.indices.latent_indices.tolist() == span(1 + p, window)
        assert context.indices.clean_latent_indices.tolist() == [0, 1 + p + window]
        assert context.indices.clean_latent_2x_indices.tolist() == span(2 + p + window, 2)
        assert context.indices.clean_latent_4x_indices.tolist() == span(4 + p + window, 16)


def test_inverted_145_frames_written_out():
    contexts = inverted_sections(frame_coded_latents(37), 9)
    last = contexts[3]  # time-last, generated first: no future at all, padding 3
    assert frames_of(last.clean_latents) == [0, -1]
    assert frames_of(last.clean_latents_2x) == [-1, -1] and frames_of(last.clean_latents_4x) == [-1] * 16
    assert last.indices.latent_indices.tolist() == span(28, 9)
    first = contexts[0]  # padding 0, sees latents 10..28
    assert frames_of(first.latents) == span(1, 9)
    assert frames_of(first.clean_latents) == [0, 10]
    assert frames_of(first.clean_latents_2x) == [11, 12]
    assert frames_of(first.clean_latents_4x) == span(13, 16)
    second = contexts[1]  # padding 1, sees latents 19..36 then one zero
    assert second.indices.latent_indices.tolist() == span(10, 9)
    assert frames_of(second.clean_latents_4x) == span(22, 15) + [-1]


def test_217_frames_use_the_capped_schedule():
    contexts = inverted_sections(frame_coded_latents(55), 9)
    starts = [c.indices.latent_indices[0].item() for c in contexts]
    assert starts == [1, 10, 19, 19, 19, 28]  # paddings 0, 1, 2, 2, 2, 3 by time


def test_extra_latents_beyond_whole_sections_are_ignored():
    aligned = inverted_sections(frame_coded_latents(19), 9)
    longer = inverted_sections(frame_coded_latents(23), 9)
    assert len(longer) == 2
    for a, b in zip(aligned, longer):
        assert torch.equal(a.latents, b.latents) and torch.equal(a.clean_latents_4x, b.clean_latents_4x)


def test_sections_do_not_share_storage_with_the_clip():
    latents = frame_coded_latents(19)
    contexts = clip_sections(latents, 9)
    latents.zero_()
    assert frames_of(contexts[0].latents) == span(1, 9)


# -- forward (F1) layout ----------------------------------------------------------------------------


@pytest.mark.parametrize("frames", [37, 73, 145, 181])
def test_f1_sections_see_the_19_preceding_latents(frames):
    window = 9
    plan = plan_sections(frames, window)
    contexts = f1_sections(frame_coded_latents(plan.latent_frames), window)
    assert [c.section_index for c in contexts] == list(range(plan.sections))
    for context in contexts:
        start = 1 + context.section_index * window
        assert frames_of(context.latents) == span(start, window)
        before = [t if t >= 0 else -1 for t in range(start - 19, start)]
        assert frames_of(context.clean_latents_4x) == before[:16]
        assert frames_of(context.clean_latents_2x) == before[16:18]
        assert frames_of(context.clean_latents) == [0, before[18]]
        assert context.indices.clean_latent_indices.tolist() == [0, 19]
        assert context.indices.latent_indices.tolist() == span(20, window)


def test_f1_73_frames_written_out():
    first, second = clip_sections(frame_coded_latents(19), 9, f1=True)
    # Section 0: only the start latent precedes it, right-aligned into the 1x slot.
    assert frames_of(first.clean_latents) == [0, 0]
    assert frames_of(first.clean_latents_2x) == [-1, -1] and frames_of(first.clean_latents_4x) == [-1] * 16
    # Section 1: latents 0..9 fill the last ten history slots.
    assert frames_of(second.clean_latents) == [0, 9]
    assert frames_of(second.clean_latents_2x) == [7, 8]
    assert frames_of(second.clean_latents_4x) == [-1] * 9 + span(0, 7)


def test_layouts_differ_only_in_context_not_targets():
    latents = frame_coded_latents(28)
    inverted, forward = clip_sections(latents, 9), clip_sections(latents, 9, f1=True)
    for a, b in zip(inverted, forward):
        assert torch.equal(a.latents, b.latents)
    assert not torch.equal(inverted[0].clean_latents, forward[0].clean_latents)


def test_short_latents_are_rejected():
    with pytest.raises(ClipTooShortError, match="37 video frames"):
        inverted_sections(frame_coded_latents(9), 9)
    with pytest.raises(DataError, match="channels, frames, height, width"):
        f1_sections(torch.zeros(16, 19, 2), 9)


# -- one-frame (1f) ---------------------------------------------------------------------------------


def one_frame_inputs(controls: int) -> tuple[torch.Tensor, torch.Tensor]:
    latents = frame_coded_latents(controls + 1)
    return latents[:, :controls], latents[:, controls:]


def test_one_frame_default_preset():
    controls, target = one_frame_inputs(1)
    context = one_frame_section(controls, target, 9, clean_indices=[0], target_index=9)
    assert context.indices.latent_indices.tolist() == [9]
    assert context.indices.clean_latent_indices.tolist() == [0, 10]
    assert context.indices.clean_latent_2x_indices.tolist() == [11, 12]
    assert context.indices.clean_latent_4x_indices.tolist() == span(13, 16)
    assert frames_of(context.clean_latents) == [0, -1]  # control, then the zero post latent
    assert frames_of(context.latents) == [1]
    assert context.clean_latents_2x is None and context.clean_latents_4x is None
    defaulted = one_frame_section(controls, target, 9)
    assert defaulted.indices.latent_indices.tolist() == [9]
    assert defaulted.indices.clean_latent_indices.tolist() == [0, 10]


def test_one_frame_1f_mc_preset():
    controls, target = one_frame_inputs(2)
    context = one_frame_section(controls, target, 9, clean_indices=[0, 1], target_index=9)
    assert context.indices.clean_latent_indices.tolist() == [0, 1, 10]
    assert frames_of(context.clean_latents) == [0, 1, -1]
    assert frames_of(context.latents) == [2]


def test_one_frame_kisekaeichi_preset():
    controls, target = one_frame_inputs(2)
    context = one_frame_section(controls, target, 9, clean_indices=[0, 10], target_index=1, no_post=True)
    assert context.indices.latent_indices.tolist() == [1]
    assert context.indices.clean_latent_indices.tolist() == [0, 10]
    assert frames_of(context.clean_latents) == [0, 1]
    # 2x/4x indices are fixed whatever no_post says.
    assert context.indices.clean_latent_2x_indices.tolist() == [11, 12]
    assert context.indices.clean_latent_4x_indices.tolist() == span(13, 16)


def test_one_frame_no_2x_no_4x_and_window():
    controls, target = one_frame_inputs(1)
    context = one_frame_section(controls, target, 9, no_2x=True)
    assert context.indices.clean_latent_2x_indices is None
    assert context.indices.clean_latent_4x_indices.tolist() == span(13, 16)
    context = one_frame_section(controls, target, 9, no_4x=True)
    assert context.indices.clean_latent_4x_indices is None
    assert context.indices.clean_latent_2x_indices.tolist() == [11, 12]
    small = one_frame_section(controls, target, 5)
    assert small.indices.latent_indices.tolist() == [5]
    assert small.indices.clean_latent_indices.tolist() == [0, 6]
    assert small.indices.clean_latent_2x_indices.tolist() == [7, 8]
    assert small.indices.clean_latent_4x_indices.tolist() == span(9, 16)


def test_one_frame_control_count_must_match_clean_indices():
    controls, target = one_frame_inputs(1)
    with pytest.raises(ConfigError, match="fp_1f_clean_indices"):
        one_frame_section(controls, target, 9, clean_indices=[0, 10])
    with pytest.raises(DataError, match="one latent frame"):
        one_frame_section(controls, torch.cat([target, target], dim=1), 9)
    with pytest.raises(DataError, match="bucket"):
        one_frame_section(controls, target[:, :, :1], 9)


def test_one_frame_empty_clean_indices_default_to_zero(caplog):
    controls, target = one_frame_inputs(1)
    context = one_frame_section(controls, target, 9, clean_indices=[])
    assert context.indices.clean_latent_indices.tolist() == [0, 10]
    assert "fp_1f_clean_indices is empty" in caplog.text
