"""Generation order, indices and history: generation and caching must build the same section contexts.

Caching emulates inference with ground-truth latents (``sections.inverted_sections`` / ``f1_sections``).
Here the generation history is fed the same ground-truth latents ("teacher forcing"), so every section
must see exactly the context caching stored for it; any drift between the two layouts would show.
"""

from __future__ import annotations

import logging

import pytest
import torch

from tuner_framepack.generation import generation_plan, new_history
from tuner_framepack.sections import f1_sections, inverted_latent_paddings, inverted_sections

CHANNELS, HEIGHT, WIDTH = 16, 2, 3


def frame_coded(latent_frames: int) -> torch.Tensor:
    """``(1, 16, F, 2, 3)`` latents where channel ``c`` of frame ``t`` holds ``t + 1 + 1000 c``."""
    frames = torch.arange(latent_frames, dtype=torch.float32).view(1, 1, -1, 1, 1) + 1
    channels = 1000 * torch.arange(CHANNELS, dtype=torch.float32).view(1, -1, 1, 1, 1)
    return (frames + channels).expand(1, CHANNELS, latent_frames, HEIGHT, WIDTH).clone()


def assert_same_indices(generated, cached) -> None:
    for name in (
        "latent_indices",
        "clean_latent_indices",
        "clean_latent_2x_indices",
        "clean_latent_4x_indices",
    ):
        assert torch.equal(getattr(generated, name), getattr(cached, name)), name


@pytest.mark.parametrize("f1", [False, True], ids=["inverted", "f1"])
@pytest.mark.parametrize("window", [9, 2])
@pytest.mark.parametrize("sections", range(1, 8))
def test_teacher_forced_generation_sees_the_cached_context(sections: int, window: int, f1: bool) -> None:
    clip = frame_coded(sections * window + 1)
    cached = (f1_sections if f1 else inverted_sections)(clip[0], window)
    plan = generation_plan(sections, window, f1=f1)
    start = clip[:, :, :1]
    history = new_history(plan, start)
    video = {}
    for step in plan.steps:
        context = history.context(step, start)
        expected = cached[step.section_index]
        assert_same_indices(step.indices, expected.indices)
        assert torch.equal(context.clean_latents[0], expected.clean_latents)
        assert torch.equal(context.clean_latents_2x[0], expected.clean_latents_2x)
        assert torch.equal(context.clean_latents_4x[0], expected.clean_latents_4x)
        first = 1 + step.section_index * window
        truth = clip[:, :, first : first + window]
        assert torch.equal(truth[0], expected.latents)
        new = history.add(step, truth, start)
        video[step.time_start] = new
    assert torch.equal(torch.cat([video[t] for t in sorted(video)], dim=2), clip)


@pytest.mark.parametrize("sections", range(1, 8))
def test_generation_order_flags_and_paddings(sections: int) -> None:
    inverted = generation_plan(sections, 9)
    assert [s.section_index for s in inverted.steps] == list(range(sections - 1, -1, -1))
    assert [s.latent_padding for s in inverted.steps] == inverted_latent_paddings(sections)
    assert [s.is_last for s in inverted.steps] == [s.section_index == 0 for s in inverted.steps]
    assert [s.is_first for s in inverted.steps] == [k == 0 for k in range(sections)]
    assert [s.adds_start_latent for s in inverted.steps] == [s.section_index == 0 for s in inverted.steps]
    forward = generation_plan(sections, 9, f1=True)
    assert [s.section_index for s in forward.steps] == list(range(sections))
    assert [s.is_last for s in forward.steps] == [k == sections - 1 for k in range(sections)]
    assert {s.latent_padding for s in forward.steps} == {0}
    assert inverted.latent_frames == forward.latent_frames == 9 * sections + 1


def test_documented_index_examples() -> None:
    plan = generation_plan(4, 9)
    first, last = plan.steps[0].indices, plan.steps[-1].indices
    assert first.latent_indices.tolist() == list(range(28, 37)) and first.clean_latent_indices.tolist() == [
        0,
        37,
    ]
    assert first.clean_latent_2x_indices.tolist() == [38, 39]
    assert first.clean_latent_4x_indices.tolist() == list(range(40, 56))
    assert last.latent_indices.tolist() == list(range(1, 10)) and last.clean_latent_indices.tolist() == [
        0,
        10,
    ]
    f1 = generation_plan(2, 9, f1=True).steps[1].indices
    assert f1.clean_latent_4x_indices.tolist() == list(
        range(1, 17)
    ) and f1.clean_latent_2x_indices.tolist() == [17, 18]
    assert f1.clean_latent_indices.tolist() == [0, 19] and f1.latent_indices.tolist() == list(range(20, 29))


def test_padding_override_keeps_time_positions() -> None:
    plan = generation_plan(4, 9, latent_paddings=[0, 0, 0, 0])
    assert [s.section_index for s in plan.steps] == [3, 2, 1, 0]
    assert all(s.indices.latent_indices.tolist() == list(range(1, 10)) for s in plan.steps)
    assert [s.time_start for s in plan.steps] == [28, 19, 10, 0]
    assert [s.is_last for s in plan.steps] == [False, False, False, True]


def test_end_latent_is_the_first_sections_post_latent_then_4x_history() -> None:
    window = 2
    plan = generation_plan(3, window)
    start, end = frame_coded(1), 7 * torch.ones(1, CHANNELS, 1, HEIGHT, WIDTH)
    history = new_history(plan, start, end)
    first = history.context(plan.steps[0], start)
    assert torch.equal(first.clean_latents[:, :, 0:1], start) and torch.equal(
        first.clean_latents[:, :, 1:2], end
    )
    assert first.clean_latents_2x.abs().sum() == 0 and first.clean_latents_4x.abs().sum() == 0
    history.add(plan.steps[0], torch.ones(1, CHANNELS, window, HEIGHT, WIDTH), start)
    second = history.context(plan.steps[1], start)
    assert torch.equal(
        second.clean_latents_2x[:, :, 1:2], end
    )  # post, 2x[0] are generated, then the end latent


def test_f1_ignores_end_latent_and_paddings(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        plan = generation_plan(2, 9, f1=True, latent_paddings=[1, 1])
        history = new_history(plan, frame_coded(1), torch.ones(1, CHANNELS, 1, HEIGHT, WIDTH))
    assert "--latent_paddings" in caplog.text and "--end_image_path" in caplog.text
    context = history.context(plan.steps[0], frame_coded(1))
    assert context.clean_latents_4x.abs().sum() == 0 and context.clean_latents_2x.abs().sum() == 0


def test_f1_video_start_is_the_history_start_not_the_section_image() -> None:
    plan = generation_plan(2, 2, f1=True)
    video_start, section_image = frame_coded(1), -frame_coded(1)
    history = new_history(plan, video_start)
    context = history.context(plan.steps[0], section_image)
    assert torch.equal(context.clean_latents[:, :, :1], section_image)
    assert torch.equal(
        context.clean_latents[:, :, 1:], video_start
    )  # [start, start] in section 0, as the demo
    new = history.add(plan.steps[0], torch.zeros(1, CHANNELS, 2, HEIGHT, WIDTH), section_image)
    assert torch.equal(new[:, :, :1], video_start) and new.shape[2] == 3
