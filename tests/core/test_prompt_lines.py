"""Prompt lines with inline switches: training prompt files, ``--from_file`` jobs and interactive input."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import pytest

from tuner_core import ConfigError, SampleRequest
from tuner_core.sampling.jobs import (
    apply_prompt_line,
    generate_grammar,
    interactive_requests,
    read_prompt_jobs,
)
from tuner_core.sampling.prompts import (
    GENERATE_PROMPTS,
    GENERATE_SECONDS_PROMPTS,
    TRAINING_PROMPTS,
    grammar_table,
    parse_prompt_line,
    read_prompt_file,
)
from tuner_core.seeds import MAX_SEED

# -- training prompt lines (--sample_prompts) ----------------------------------------------------------


@pytest.mark.parametrize(
    ("switch", "field", "value"),
    [
        ("--w 512", "width", 512),
        ("--h 320", "height", 320),
        ("--f 37", "frames", 37),
        ("--d 42", "seed", 42),
        (f"--d {MAX_SEED}", "seed", MAX_SEED),
        ("--s 25", "steps", 25),
        ("--s 5000", "steps", 1000),  # the reference clamps training steps to 1000
        ("--g 10.0", "guidance", 10.0),
        ("--l 6", "cfg_scale", 6.0),
        ("--fs 3.5", "flow_shift", 3.5),
        ("--n blurry, low quality", "negative_prompt", "blurry, low quality"),
        ("--n", "negative_prompt", ""),
        ("--i start image.png", "image_path", Path("start image.png")),
        ("--ei end.png", "end_image_path", Path("end.png")),
        ("--cn control.mp4", "control_video_path", Path("control.mp4")),
        ("--ci a.png", "control_paths", (Path("a.png"),)),
        ("--of target_index=1,no_2x", "one_frame", "target_index=1,no_2x"),
        ("--W 64", "width", 64),  # the reference matches training switches case-insensitively
        ("--w\t64", "width", 64),
    ],
)
def test_each_training_switch(switch, field, value):
    request = parse_prompt_line(f"a cat walks {switch}")
    assert request.prompt == "a cat walks"
    assert getattr(request, field) == value
    assert request.extra == {}


def test_a_full_training_line_and_the_defaults_of_what_it_leaves_out():
    request = parse_prompt_line("a cat --w 512 --ci a.png --ci b.png --d 1 --d 2  --of default")
    assert request.control_paths == (Path("a.png"), Path("b.png"))  # repeated, in order
    assert request.seed == 2  # a repeated single switch keeps the last value
    assert request.one_frame_options == ("default",)
    assert (request.height, request.frames, request.steps, request.guidance) == (256, 1, 20, None)
    assert parse_prompt_line("a dog").one_frame_options == ()


@pytest.mark.parametrize("line", ["", "   ", "# a comment --w 8", "  # indented comment"])
def test_blank_and_comment_lines_are_skipped(line):
    assert parse_prompt_line(line) is None


def test_a_line_that_is_only_switches_has_an_empty_prompt():
    assert parse_prompt_line("--w 64 -- --h 32") == SampleRequest(prompt="", width=64, height=32)


@pytest.mark.parametrize(
    ("switch", "expects"),
    [
        ("--w abc", "--w expects a positive integer (pixels), got 'abc'"),
        ("--w 0", "--w expects a positive integer"),
        ("--h", "--h expects a positive integer (pixels), got nothing"),
        ("--f 3.5", "--f expects a positive integer (frames)"),
        ("--d -1", "--d expects a number: an integer from 0 to 2**64 - 1"),
        (f"--d {MAX_SEED + 1}", "--d expects a number: an integer from 0 to 2**64 - 1"),
        ("--s 0", "--s expects a positive integer"),
        ("--g high", "--g expects a non-negative number, got 'high'"),
        ("--l nan", "--l expects a non-negative number"),
        ("--fs 0", "--fs expects a positive number"),
        ("--i", "--i expects an image path, got nothing"),
        ("--of", "--of expects one-frame options"),
    ],
)
def test_a_bad_value_names_the_place_the_switch_and_what_it_expects(switch, expects):
    with pytest.raises(ConfigError, match=r"^prompts\.txt:3: ") as error:
        parse_prompt_line(f"a cat {switch}", where="prompts.txt:3")
    assert expects in str(error.value)


def test_unknown_switches_go_to_extra_with_one_warning_per_file(tmp_path, caplog):
    path = tmp_path / "prompts.txt"
    path.write_text("a cat --zz 3 --vs 2\na dog --zz 4\n", encoding="utf-8")
    with caplog.at_level(logging.WARNING):
        first, second = read_prompt_file(path)
    assert first.extra == {"zz": "3", "vs": "2"}
    assert second.extra == {"zz": "4"}
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2  # --zz once, at its first line
    assert warnings[0].startswith(f"{path}:1: --zz is not a training prompt switch")
    assert "(it is one in generate prompt lines)" in warnings[1]  # --vs belongs to the generators


def test_read_prompt_file_numbers_the_lines_it_complains_about(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("# samples\n\na cat --w 64\na dog --w sixty\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"prompts\.txt:4: --w expects"):
        read_prompt_file(path)


def test_read_prompt_file_skips_comments_and_refuses_missing_or_empty_files(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("# comment\n\n  \na red square --w 32 --h 32 --f 9 --s 3 --d 5\n", encoding="utf-8")
    assert read_prompt_file(path) == [
        SampleRequest(prompt="a red square", width=32, height=32, frames=9, steps=3, seed=5)
    ]
    with pytest.raises(ConfigError, match="does not exist"):
        read_prompt_file(tmp_path / "missing.txt")
    path.write_text("# only a comment\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="holds no prompt"):
        read_prompt_file(path)


def test_toml_prompt_files_as_the_reference_reads_them(tmp_path):
    path = tmp_path / "prompts.toml"
    path.write_text(
        "[prompt]\nwidth = 512\nheight = 320\nsample_steps = 20\nguidance_scale = 10\n"
        '[[prompt.subset]]\nprompt = "a cat"\nframe_count = 37\nimage_path = "cat.png"\n'
        '[[prompt.subset]]\nprompt = "a dog"\nseed = 7\nwidth = 256\ncontrol_image_path = ["a.png"]\n',
        encoding="utf-8",
    )
    cat, dog = read_prompt_file(path)
    assert (cat.prompt, cat.width, cat.frames, cat.steps, cat.guidance) == ("a cat", 512, 37, 20, 10.0)
    assert cat.image_path == Path("cat.png")
    assert (dog.width, dog.height, dog.seed, dog.control_paths) == (256, 320, 7, (Path("a.png"),))


def test_json_prompt_files_hold_lines_or_dictionaries(tmp_path, caplog):
    path = tmp_path / "prompts.json"
    entries = ["a cat --w 64", {"prompt": "a dog", "cfg_scale": 2, "enum": 3, "colour": "red"}]
    path.write_text(json.dumps(entries), encoding="utf-8")
    with caplog.at_level(logging.WARNING):
        cat, dog = read_prompt_file(path)
    assert cat.width == 64
    assert (dog.prompt, dog.cfg_scale, dog.extra) == ("a dog", 2.0, {"colour": "red"})
    assert "prompt 2: unknown key 'colour'" in caplog.text
    path.write_text(json.dumps([{"prompt": "x", "width": "wide"}]), encoding="utf-8")
    with pytest.raises(ConfigError, match=r"prompt 1: --w expects a positive integer"):
        read_prompt_file(path)
    path.write_text(json.dumps({"prompt": "x"}), encoding="utf-8")
    with pytest.raises(ConfigError, match=r"\[\[prompt.subset\]\]"):
        read_prompt_file(path)


# -- generate prompt lines (--from_file, --interactive) ------------------------------------------------

FRAMEPACK_BASE = SampleRequest(
    prompt="from the command line",
    negative_prompt="ugly",
    width=640,
    height=480,
    steps=25,
    guidance=10.0,
    seed=11,
    image_path=Path("base.png"),
    control_paths=(Path("c1.png"), Path("c2.png")),
    video_seconds=5.0,
    extra={"kept": 1, "replaced": 1},
)


@pytest.mark.parametrize(
    ("switch", "field", "value"),
    [
        ("--w 512", "width", 512),
        ("--h 320", "height", 320),
        ("--f 2.5", "video_seconds", 2.5),  # FramePack's --f is seconds
        ("--d 3", "seed", 3),
        ("--s 2000", "steps", 2000),  # no clamp in the generators
        ("--g 6", "cfg_scale", 6.0),  # --g is the CFG scale there, like --l
        ("--l 7", "cfg_scale", 7.0),
        ("--fs 3", "flow_shift", 3.0),
        ("--n bad hands", "negative_prompt", "bad hands"),
        ("--i start.png", "image_path", Path("start.png")),
        ("--vs 3", "video_sections", 3),
        ("--ei end.png", "end_image_path", Path("end.png")),
        ("--ci x.png --ci y.png", "control_paths", (Path("x.png"), Path("y.png"))),  # replaces the base's
        ("--cim m.png", "control_mask_paths", (Path("m.png"),)),
        ("--of target_index=9", "one_frame", "target_index=9"),
    ],
)
def test_each_framepack_generate_switch_overrides_the_command_line(switch, field, value):
    job = apply_prompt_line(FRAMEPACK_BASE, f"a cat {switch}")
    assert job.prompt == "a cat"
    assert getattr(job, field) == value
    assert job.guidance == 10.0  # no line switch reaches the embedded guidance


def test_a_job_inherits_what_its_line_does_not_set():
    job = apply_prompt_line(FRAMEPACK_BASE, "a cat --w 512 --mck 2 --mcrr 0.2 --mct 0.1 --replaced 2")
    assert (job.width, job.height) == (512, 480)  # --w alone changes only the width
    assert (job.steps, job.seed, job.negative_prompt, job.video_seconds) == (25, 11, "ugly", 5.0)
    assert job.image_path == Path("base.png") and job.control_paths == FRAMEPACK_BASE.control_paths
    assert job.extra == {
        "kept": 1,
        "replaced": "2",
        "magcache_k": 2,
        "magcache_retention_ratio": 0.2,
        "magcache_threshold": 0.1,
    }
    assert apply_prompt_line(FRAMEPACK_BASE, "# comment") is None


def test_the_grammar_follows_how_the_base_measures_length():
    assert generate_grammar(FRAMEPACK_BASE) is GENERATE_SECONDS_PROMPTS
    assert generate_grammar(SampleRequest(prompt="", video_sections=2)) is GENERATE_SECONDS_PROMPTS
    frames_base = SampleRequest(prompt="", frames=17)
    assert generate_grammar(frames_base) is GENERATE_PROMPTS
    assert apply_prompt_line(frames_base, "x --f 33").frames == 33
    with pytest.raises(ConfigError, match="--f expects a positive integer"):
        apply_prompt_line(frames_base, "x --f 2.5")
    job = apply_prompt_line(FRAMEPACK_BASE, "x --f 37", grammar=TRAINING_PROMPTS)
    assert (job.frames, job.video_seconds) == (37, 5.0)


def test_generate_lines_check_sizes_the_generators_reject():
    with pytest.raises(ConfigError, match=r"jobs\.txt:2: --w expects a positive multiple of 8"):
        apply_prompt_line(FRAMEPACK_BASE, "a cat --w 500", where="jobs.txt:2")
    with pytest.raises(ConfigError, match="--f expects a positive number"):
        apply_prompt_line(FRAMEPACK_BASE, "a cat --f 0")


def test_image_masks_are_unknown_as_in_the_reference(caplog):
    with caplog.at_level(logging.WARNING):
        job = apply_prompt_line(FRAMEPACK_BASE, "a cat --im mask.png --cn c.mp4")
    assert job.extra["im"] == "mask.png" and job.extra["cn"] == "c.mp4"
    assert "--im is not a FramePack generate prompt switch" in caplog.text
    assert (
        "--cn is not a FramePack generate prompt switch (it is one in training prompt lines)" in caplog.text
    )


def test_read_prompt_jobs(tmp_path, caplog):
    path = tmp_path / "jobs.txt"
    path.write_text("# batch\na cat --f 2 --zz 1\n\na dog --d 5 --zz 2\n", encoding="utf-8")
    with caplog.at_level(logging.WARNING):
        cat, dog = read_prompt_jobs(path, FRAMEPACK_BASE)
    assert (cat.prompt, cat.video_seconds, cat.seed) == ("a cat", 2.0, 11)
    assert (dog.prompt, dog.video_seconds, dog.seed) == ("a dog", 5.0, 5)
    assert caplog.text.count("--zz is not") == 1 and f"{path}:2: --zz" in caplog.text
    path.write_text("a cat\na dog --s x\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"jobs\.txt:2: --s expects a positive integer, got 'x'"):
        read_prompt_jobs(path, FRAMEPACK_BASE)
    with pytest.raises(ConfigError, match="--from_file .* does not exist"):
        read_prompt_jobs(tmp_path / "missing.txt", FRAMEPACK_BASE)
    path.write_text("\n# nothing\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="holds no prompt"):
        read_prompt_jobs(path, FRAMEPACK_BASE)


# -- interactive ------------------------------------------------------------------------------------


def _interactive(text: str, **kwargs) -> tuple[list[SampleRequest], list[str]]:
    messages: list[str] = []
    jobs = list(interactive_requests(FRAMEPACK_BASE, io.StringIO(text), messages.append, **kwargs))
    return jobs, messages


def test_interactive_reads_until_the_end_of_input_and_skips_bad_lines():
    jobs, messages = _interactive("a cat --s 3\n\n# note\na dog --w abc\na bird --d 9")
    assert [(j.prompt, j.steps, j.seed) for j in jobs] == [("a cat", 3, 11), ("a bird", 25, 9)]
    assert messages[0].startswith("Interactive mode")
    assert messages[1] == "<stdin>:4: --w expects a positive multiple of 8 (pixels), got 'abc' (line skipped)"
    assert messages[-1] == "Leaving interactive mode."


@pytest.mark.parametrize("stop", ["exit", "QUIT", "  quit  ", "\x04", "\x1a"])
def test_interactive_stops_at_exit_quit_and_typed_eof_characters(stop):
    jobs, _ = _interactive(f"a cat\n{stop}\na dog\n")
    assert [j.prompt for j in jobs] == ["a cat"]


def test_interactive_reads_a_line_only_when_the_next_job_is_asked_for():
    stream = io.StringIO("a cat\na dog\n")
    asked: list[str] = []
    jobs = interactive_requests(FRAMEPACK_BASE, stream, lambda _: None, ask=asked.append)
    assert next(jobs).prompt == "a cat"
    assert stream.tell() == len("a cat\n") and asked == ["> "]
    assert [j.prompt for j in jobs] == ["a dog"]
    assert asked == ["> "] * 3  # the third read meets the end of the input


def test_interactive_goes_on_after_ctrl_c_while_waiting():
    class Interrupted(io.StringIO):
        interrupted = False

        def readline(self, *args):
            if not self.interrupted:
                self.interrupted = True
                raise KeyboardInterrupt
            return super().readline(*args)

    messages: list[str] = []
    jobs = list(interactive_requests(FRAMEPACK_BASE, Interrupted("a cat\n"), messages.append))
    assert [j.prompt for j in jobs] == ["a cat"]
    assert any(m.startswith("Interrupted.") for m in messages)


def test_grammar_table_lists_every_switch():
    switches = {switch for switch, _, _ in grammar_table(GENERATE_SECONDS_PROMPTS)}
    assert {"--w", "--h", "--f", "--d", "--s", "--g", "--l", "--n", "--i", "--vs", "--ei", "--ci"} <= switches
    assert {"--cim", "--of", "--fs", "--mcrr", "--mct", "--mck"} <= switches
    assert "--cn" in dict((s, f) for s, f, _ in grammar_table(TRAINING_PROMPTS))
