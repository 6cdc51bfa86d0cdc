"""FramePack cache names, tensor keys and metadata against the reference grammar, written out by hand."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from tuner_core import ConfigError, DataError, LatentCacheName, MediaItem
from tuner_framepack import cache_format as cf
from tuner_framepack.sections import ClipTooShortError, clip_sections, one_frame_section

H, W = 4, 6


def video_item(
    stem: str = "walk_cycle_v2", start: int = 12, frames: int = 81, size=(1920, 1080)
) -> MediaItem:
    return MediaItem(
        stem=stem,
        source=Path(f"videos/{stem}.mp4"),
        dataset_index=0,
        cache_directory=Path("cache"),
        original_size=size,
        bucket=(48, 32),
        caption="a person walks",
        frame_indices=tuple(range(start, start + frames)),
    )


def image_item(stem: str = "photo_1", size=(512, 768)) -> MediaItem:
    return MediaItem(
        stem=stem,
        source=Path(f"images/{stem}.png"),
        dataset_index=0,
        cache_directory=Path("cache"),
        original_size=size,
        bucket=(48, 32),
        caption="a photo",
    )


def latents(frames: int) -> torch.Tensor:
    return torch.randn(16, frames, H, W)


# -- names ------------------------------------------------------------------------------------------


def test_section_names_follow_the_reference_pattern():
    # 81 frames -> 21 latents -> 2 sections of 9.
    assert cf.latent_cache_names(video_item(), 9) == [
        "walk_cycle_v2_00012-081-0000_1920x1080_fp.safetensors",
        "walk_cycle_v2_00012-081-0001_1920x1080_fp.safetensors",
    ]
    # The count in the name is the extracted count, before trimming to 145 frames.
    names = cf.latent_cache_names(video_item("c", start=0, frames=150, size=(640, 480)), 9)
    assert names == [f"c_00000-150-{s:04d}_0640x0480_fp.safetensors" for s in range(4)]
    assert (
        cf.latent_cache_names(video_item("c", frames=81), 5)[-1]
        == "c_00012-081-0003_1920x1080_fp.safetensors"
    )


def test_image_and_text_names():
    assert cf.latent_cache_names(image_item(), 9) == ["photo_1_0512x0768_fp.safetensors"]
    assert cf.NAMING.latent_name(image_item("x", (64, 10000))) == "x_0064x10000_fp.safetensors"
    assert cf.NAMING.text_name("walk_cycle_v2") == "walk_cycle_v2_fp_te.safetensors"


def test_too_short_clip_names_its_source():
    with pytest.raises(ClipTooShortError, match=r"videos/short\.mp4.*at least 37 frames"):
        cf.latent_cache_names(video_item("short", frames=33), 9)


@pytest.mark.parametrize(
    ("name", "latent", "text"),
    [
        ("walk_cycle_v2_00012-081-0000_1920x1080_fp.safetensors", True, False),
        ("photo_1_0512x0768_fp.safetensors", True, False),
        ("cache/sub/a_0064x0064_fp.safetensors", True, False),
        ("walk_cycle_v2_fp_te.safetensors", False, True),
        ("a_0064x0064_hv.safetensors", False, False),
        ("notes_fp.safetensors", False, False),
        ("a_64by64_fp.safetensors", False, False),
        ("_fp_te.safetensors", False, False),
    ],
)
def test_cache_kinds(name, latent, text):
    assert cf.NAMING.is_latent(name) is latent
    assert cf.NAMING.is_text(name) is text


def test_parse_and_text_cache_for_read_tokens_from_the_end():
    parsed = cf.NAMING.parse_latent("walk_cycle_v2_00012-081-0001_1920x1080_fp.safetensors")
    assert parsed == LatentCacheName("walk_cycle_v2", 1920, 1080, frame_position=12, frame_count=81, part=1)
    assert parsed.is_video
    image = cf.NAMING.parse_latent("photo_1_0512x0768_fp.safetensors")
    assert image == LatentCacheName("photo_1", 512, 768)
    assert not image.is_video
    no_section = cf.NAMING.parse_latent("v_00000-037_0064x0064_fp.safetensors")
    assert (no_section.stem, no_section.frame_count, no_section.part) == ("v", 37, None)
    assert cf.NAMING.text_for("walk_cycle_v2_00012-081-0001_1920x1080_fp.safetensors") == (
        "walk_cycle_v2_fp_te.safetensors"
    )
    assert cf.NAMING.text_for("photo_1_0512x0768_fp.safetensors") == "photo_1_fp_te.safetensors"
    # An image whose stem ends like a clip token: the dataset kind decides, as in the reference.
    assert cf.NAMING.text_for("scan_00001-002_0512x0512_fp.safetensors", is_video=False) == (
        "scan_00001-002_fp_te.safetensors"
    )
    # An image named only by digits has no stem before the size, so it is never read as a clip.
    assert cf.NAMING.text_for("00001-002_0512x0512_fp.safetensors") == "00001-002_fp_te.safetensors"


def test_names_round_trip_through_the_parser():
    item = video_item("a_b_c", start=3, frames=109, size=(720, 1280))
    for section, name in enumerate(cf.latent_cache_names(item, 9)):
        parsed = cf.NAMING.parse_latent(name)
        assert (parsed.stem, parsed.frame_position, parsed.frame_count, parsed.part) == (
            "a_b_c",
            3,
            109,
            section,
        )
        assert (parsed.width, parsed.height) == (720, 1280)
        assert cf.NAMING.text_for(name) == cf.NAMING.text_name(item.stem)


@pytest.mark.parametrize(
    "name",
    ["a_0064x0064.safetensors", "a_fp_te.safetensors", "a_b_fp.safetensors", "a_x_0064x0064_fp.safetensors"],
)
def test_bad_names_are_data_errors(name):
    if name == "a_x_0064x0064_fp.safetensors":
        with pytest.raises(DataError, match="is not a clip.s cache name"):
            cf.NAMING.parse_latent(name, is_video=True)
        return
    with pytest.raises(DataError, match="not a latent cache name"):
        cf.NAMING.parse_latent(name)


# -- tensors and metadata ---------------------------------------------------------------------------


def test_section_tensor_keys_shapes_and_dtypes():
    section = clip_sections(latents(19), 9)[1]
    tensors = cf.section_tensors(section, torch.randn(1, 7, 12))
    expected = {
        "latents_9x4x6_float16": (16, 9, 4, 6),
        "image_embeddings_float16": (7, 12),
        "latent_indices_int64": (9,),
        "clean_latent_indices_int64": (2,),
        "latents_clean_9x4x6_float16": (16, 2, 4, 6),
        "clean_latent_2x_indices_int64": (2,),
        "latents_clean_2x_9x4x6_float16": (16, 2, 4, 6),
        "clean_latent_4x_indices_int64": (16,),
        "latents_clean_4x_9x4x6_float16": (16, 16, 4, 6),
    }
    assert list(tensors) == list(expected)
    assert {key: tuple(value.shape) for key, value in tensors.items()} == expected
    for key, value in tensors.items():
        assert value.dtype == (torch.int64 if key.endswith("_int64") else torch.float16)
    assert torch.equal(tensors["latents_9x4x6_float16"], section.latents.half())
    assert tensors["latent_indices_int64"].tolist() == list(range(10, 19))  # time-last of two: padding 1
    bf16 = cf.section_tensors(section, torch.randn(7, 12), dtype=torch.bfloat16)
    assert (
        "latents_clean_4x_9x4x6_bfloat16" in bf16
        and bf16["image_embeddings_bfloat16"].dtype == torch.bfloat16
    )


def test_one_frame_tensors_have_no_2x_4x_latents():
    controls = latents(2)
    context = one_frame_section(controls, latents(1), 9, clean_indices=[0, 1])
    assert sorted(cf.section_tensors(context, torch.randn(7, 12))) == [
        "clean_latent_2x_indices_int64",
        "clean_latent_4x_indices_int64",
        "clean_latent_indices_int64",
        "image_embeddings_float16",
        "latent_indices_int64",
        "latents_1x4x6_float16",
        "latents_clean_1x4x6_float16",
    ]
    bare = one_frame_section(
        controls, latents(1), 9, clean_indices=[0, 10], no_post=True, no_2x=True, no_4x=True
    )
    assert sorted(cf.section_tensors(bare, torch.randn(7, 12))) == [
        "clean_latent_indices_int64",
        "image_embeddings_float16",
        "latent_indices_int64",
        "latents_1x4x6_float16",
        "latents_clean_1x4x6_float16",
    ]


def test_records_carry_name_and_reference_metadata():
    item = video_item(frames=81)
    record = cf.section_record(item, clip_sections(latents(21), 9)[1], torch.randn(7, 12))
    assert record.name == "walk_cycle_v2_00012-081-0001_1920x1080_fp.safetensors"
    assert record.metadata == {
        "architecture": "framepack",
        "width": "1920",
        "height": "1080",
        "format_version": "1.0.1",
        "frame_count": "81",
    }
    one_frame = one_frame_section(latents(1), latents(1), 9)
    image_record = cf.section_record(image_item(), one_frame, torch.randn(7, 12))
    assert image_record.name == "photo_1_0512x0768_fp.safetensors"
    assert image_record.metadata == {
        "architecture": "framepack",
        "width": "512",
        "height": "768",
        "format_version": "1.0.1",
    }


def test_text_tensors_and_metadata():
    mask = torch.tensor([1, 1, 0, 0])
    tensors = cf.text_tensors(torch.randn(4, 8).half(), mask, torch.randn(5).half())
    assert list(tensors) == ["llama_vec_float16", "llama_attention_mask", "clip_l_pooler_float16"]
    assert tensors["llama_attention_mask"].dtype == torch.bool
    assert tensors["llama_attention_mask"].tolist() == [True, True, False, False]
    assert cf.text_cache_metadata("a cat") == {
        "architecture": "framepack",
        "caption1": "a cat",
        "format_version": "1.0.1",
    }
    with pytest.raises(DataError, match="llama_attention_mask"):
        cf.text_tensors(torch.randn(4, 8), torch.ones(3, dtype=torch.bool), torch.randn(5))


def test_nan_becomes_zero_with_a_warning(caplog):
    section = clip_sections(latents(10), 9)[0]
    section.latents[0, 0, 0, 0] = float("nan")
    tensors = cf.section_tensors(section, torch.randn(7, 12))
    assert tensors["latents_9x4x6_float16"][0, 0, 0, 0].item() == 0
    assert not torch.isnan(tensors["latents_9x4x6_float16"]).any()
    assert "latents_9x4x6_float16" in caplog.text and "NaN" in caplog.text


# -- loading ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cache_key", "batch_key"),
    [
        ("latents_9x4x6_float16", "latents"),
        ("latents_clean_9x4x6_float16", "latents_clean"),
        ("latents_clean_2x_9x4x6_bfloat16", "latents_clean_2x"),
        ("latents_clean_4x_1x4x6_float32", "latents_clean_4x"),
        ("image_embeddings_float16", "image_embeddings"),
        ("clean_latent_4x_indices_int64", "clean_latent_4x_indices"),
        ("llama_vec_float8_e4m3fn", "llama_vec"),
        ("llama_attention_mask", "llama_attention_mask"),
        ("clip_l_pooler_float16", "clip_l_pooler"),
    ],
)
def test_batch_keys(cache_key, batch_key):
    assert cf.batch_key(cache_key) == batch_key


def test_saved_caches_load_back_into_batch_keys(tmp_path):
    section = clip_sections(latents(19), 9, f1=True)[1]
    record = cf.section_record(video_item(frames=73), section, torch.randn(7, 12))
    text = cf.text_tensors(
        torch.randn(4, 8).half(), torch.tensor([True, False, False, False]), torch.randn(5).half()
    )
    save_file(record.tensors, tmp_path / record.name, metadata=record.metadata)
    save_file(text, tmp_path / "t.safetensors", metadata=cf.text_cache_metadata("x"))
    with safe_open(tmp_path / record.name, "pt") as f:
        assert f.metadata() == record.metadata
    loaded = load_file(tmp_path / record.name)
    loaded_text = load_file(tmp_path / "t.safetensors")
    element = cf.batch_tensors(loaded, loaded_text)
    assert sorted(element) == sorted(cf.LATENT_BATCH_KEYS + cf.TEXT_BATCH_KEYS)
    assert torch.equal(element["latents"], section.latents.half())
    assert torch.equal(element["latents_clean_4x"], section.clean_latents_4x.half())
    assert element["clean_latent_indices"].tolist() == [0, 19]
    assert element["llama_attention_mask"].dtype == torch.bool


def test_two_dtypes_of_one_tensor_collide():
    with pytest.raises(DataError, match="llama_vec"):
        cf.batch_tensors({}, {"llama_vec_float16": torch.zeros(1), "llama_vec_bfloat16": torch.zeros(1)})


# -- window size check ------------------------------------------------------------------------------


def header_of(tensors):
    return {key: (str(value.dtype), tuple(value.shape)) for key, value in tensors.items()}


def test_window_size_of_section_caches():
    tensors = cf.section_tensors(clip_sections(latents(11), 5)[1], torch.randn(7, 12))
    assert cf.cache_window_size(tensors) == 5
    assert cf.header_window_size(header_of(tensors)) == 5
    cf.check_window_size("a.safetensors", cf.header_window_size(header_of(tensors)), 5)
    with pytest.raises(ConfigError) as caught:
        cf.check_window_size(
            "cache/a_00000-041-0001_0064x0064_fp.safetensors", cf.cache_window_size(tensors), 9
        )
    message = str(caught.value)
    assert "cache/a_00000-041-0001_0064x0064_fp.safetensors" in message
    assert "latent window size 5" in message and "--latent_window_size 9" in message
    # A one-latent window is told from a one-frame cache by its 2x/4x history or the frame_count metadata.
    single = cf.section_tensors(clip_sections(latents(3), 1)[1], torch.randn(7, 12))
    assert cf.cache_window_size(single) == 1 and cf.header_window_size(header_of(single)) == 1
    assert cf.cache_window_size({"latents_1x4x6_float16": torch.zeros(1)}, {"frame_count": "9"}) == 1


def test_header_with_inconsistent_indices_is_a_data_error():
    header = header_of(cf.section_tensors(clip_sections(latents(19), 9)[0], torch.randn(7, 12)))
    header["latent_indices_int64"] = ("torch.int64", (5,))
    with pytest.raises(DataError, match="latent_indices_int64"):
        cf.header_window_size(header)


def test_window_size_of_one_frame_caches():
    controls, target = latents(1), latents(1)
    default = cf.section_tensors(one_frame_section(controls, target, 5), torch.randn(7, 12))
    assert cf.cache_window_size(default) == 5
    assert cf.header_window_size(header_of(default)) is None  # index values are not in a header
    only_4x = cf.section_tensors(one_frame_section(controls, target, 7, no_2x=True), torch.randn(7, 12))
    assert cf.cache_window_size(only_4x) == 7
    neither = cf.section_tensors(
        one_frame_section(controls, target, 7, no_2x=True, no_4x=True), torch.randn(7, 12)
    )
    assert cf.cache_window_size(neither) is None
    cf.check_window_size("n.safetensors", cf.cache_window_size(neither), 9)  # nothing to compare: accepted
    with pytest.raises(ConfigError, match="latent window size 5"):
        cf.check_window_size("d.safetensors", cf.cache_window_size(default), 9)
