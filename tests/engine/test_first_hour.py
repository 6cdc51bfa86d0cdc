"""A new user's first hour on the toy architecture: seeds, pre-flight, resume checks, one-line errors.

Where a test proves that a problem is found before any model loads, the denoiser it names is a text file
that would fail to load: reaching the loader would raise a different error than the one asserted.
"""

from __future__ import annotations

import json
import logging

import pytest
import torch
from safetensors.torch import load_file

from tuner_cli.main import main
from tuner_core import ConfigError, NotAvailableError
from tuner_core.seeds import MAX_SEED, derive_seed

from .helpers import cache_all, run, train_values


@pytest.fixture
def broken_dit(tmp_path):
    path = tmp_path / "broken-dit.safetensors"
    path.write_text("this is not a model\n")
    return path


@pytest.mark.parametrize("seed", [None, 0, 2**31, 2**63, MAX_SEED])
def test_training_runs_with_any_seed_a_user_can_type(toy, tmp_path, seed):
    cache_all(toy)
    values = train_values(toy, tmp_path / "out", max_train_steps=2)
    values.pop("seed")
    if seed is not None:
        values["seed"] = seed
    result = run("train", values)
    assert result.counts["steps"] == 2 and (tmp_path / "out" / "last.safetensors").is_file()


def test_a_seed_beyond_64_bits_is_refused_with_the_range(toy, tmp_path):
    with pytest.raises(ConfigError, match=r"0 \.\. 18446744073709551615"):
        run("train", train_values(toy, tmp_path / "out", seed=MAX_SEED + 1))


def test_derived_seeds_fit_torch_and_differ_per_part():
    seeds = {derive_seed(MAX_SEED, "batch", rank, n) for rank in range(2) for n in range(50)}
    assert len(seeds) == 100 and all(0 <= s <= MAX_SEED for s in seeds)


def test_output_dir_that_is_a_file_fails_before_any_model_loads(toy, tmp_path, broken_dit, capsys):
    cache_all(toy)
    taken = tmp_path / "taken"
    taken.write_text("my notes")
    code = main(
        ["train", "--arch", "toy", "--dataset_config", str(toy.dataset), "--dit", str(broken_dit)]
        + ["--network_module", "lora", "--output_dir", str(taken)]
    )
    err = capsys.readouterr().err
    assert code == 2 and f"--output_dir {taken}: is a file" in err and "Traceback" not in err
    assert taken.read_text() == "my notes"


def test_output_dir_below_a_file_and_an_unwritable_logging_dir_are_found(toy, tmp_path, broken_dit):
    cache_all(toy)
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError) as caught:
        run(
            "train",
            train_values(
                toy, tmp_path / "file" / "out", dit=broken_dit, logging_dir=tmp_path / "file" / "logs"
            ),
        )
    message = str(caught.value)
    assert "2 problems" in message and "--output_dir" in message and "--logging_dir" in message
    assert "is a file, so the directory cannot be created" in message


def test_many_problems_are_reported_together_before_loading(toy, tmp_path, broken_dit):
    cache_all(toy)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red square --d many\n")
    values = train_values(
        toy,
        tmp_path / "out",
        dit=broken_dit,
        network_module="lorra",
        optimizer_type="AdamW9",
        lr_scheduler="constant",
        lr_warmup_steps=10,
        resume=tmp_path,
        sample_prompts=prompts,
        network_weights=tmp_path / "missing.safetensors",
    )
    with pytest.raises(ConfigError) as caught:
        run("train", values)
    message = str(caught.value)
    assert message.startswith("6 problems, found before loading any model")
    for expected in (
        "--network_weights",
        "--network_module: unknown network type 'lorra'. Did you mean 'lora'?",
        "--optimizer_type 'AdamW9' is unknown",
        "--lr_scheduler constant has no warm-up",
        "is not a tuner state directory",
        "--d expects a number",
    ):
        assert expected in message, expected


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({"network_module": "nope"}, "unknown network type"),
        ({"optimizer_type": "torch.optim.NoSuchThing"}, "has no 'NoSuchThing'"),
        ({"optimizer_args": ["betas=oops"]}, "rejected by"),
        ({"lr_scheduler": "linear", "lr_warmup_steps": 5, "lr_decay_steps": 5}, "exceed the 6 training"),
        ({"dim_from_weights": True}, "--dim_from_weights reads the rank from --network_weights"),
    ],
)
def test_each_option_is_checked_before_the_model_loads(toy, tmp_path, broken_dit, extra, expected):
    cache_all(toy)
    values = train_values(toy, tmp_path / "out", dit=broken_dit, max_train_steps=6, **extra)
    with pytest.raises(ConfigError, match=expected):
        run("train", values)


def test_memory_options_are_refused_before_the_model_loads(toy, tmp_path, broken_dit):
    cache_all(toy)
    with pytest.raises(NotAvailableError, match="--blocks_to_swap"):
        run("train", train_values(toy, tmp_path / "out", dit=broken_dit, blocks_to_swap=2))


def test_resume_with_another_rank_names_the_setting(toy, tmp_path, broken_dit):
    cache_all(toy)
    out = tmp_path / "out"
    run("train", train_values(toy, out, max_train_steps=2, save_state_on_train_end=True))
    state = out / "last-state"
    assert (state / "tuner_run.json").is_file()
    with pytest.raises(ConfigError) as caught:
        run("train", train_values(toy, out, dit=broken_dit, network_dim=8, resume=state))
    message = str(caught.value)
    assert "--network_dim 4 (this command: 8)" in message and "--network_module" in message
    assert "load_state_dict" not in message


def test_resume_of_a_state_without_its_record_still_names_the_mismatch(toy, tmp_path):
    cache_all(toy)
    out = tmp_path / "out"
    run("train", train_values(toy, out, max_train_steps=2, save_state_on_train_end=True))
    (out / "last-state" / "tuner_run.json").unlink()  # as an older tuner wrote it
    with pytest.raises(ConfigError, match="does not fit the network or optimizer") as caught:
        run("train", train_values(toy, out, network_dim=8, resume=out / "last-state"))
    assert len(str(caught.value).splitlines()) == 1


def test_resume_with_the_same_settings_continues(toy, tmp_path):
    cache_all(toy)
    out = tmp_path / "out"
    run("train", train_values(toy, out, max_train_steps=2, save_state_on_train_end=True))
    result = run("train", train_values(toy, out, max_train_steps=4, resume=out / "last-state"))
    assert result.counts["steps"] == 4


def test_a_resumed_run_without_seed_keeps_the_seed_of_the_state(toy, tmp_path):
    cache_all(toy)
    common = {"max_train_steps": 4, "save_every_n_steps": 2, "save_state": True}
    values = train_values(toy, tmp_path / "unbroken", **common)
    values.pop("seed")  # a random seed, recorded in every state
    run("train", values)
    state = tmp_path / "unbroken" / "last-step00000002-state"
    assert json.loads((state / "tuner_run.json").read_text())["seed"] >= 0
    resumed = {**values, "output_dir": tmp_path / "resumed", "resume": state}
    run("train", resumed)
    a, b = (load_file(str(tmp_path / d / "last.safetensors")) for d in ("unbroken", "resumed"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_cache_directory_that_cannot_be_created_is_found_first(toy, tmp_path):
    (tmp_path / "blocker").write_text("")
    dataset = tmp_path / "dataset.toml"
    text = toy.dataset.read_text().replace(str(toy.cache), str(tmp_path / "blocker" / "cache"))
    assert text != toy.dataset.read_text()
    dataset.write_text(text)
    with pytest.raises(ConfigError, match="cache_directory .* is a file, so the directory cannot be created"):
        run("cache-latents", {"dataset_config": dataset, "vae": toy.vae})


def test_generate_checks_lora_files_before_loading(toy, tmp_path, broken_dit):
    not_lora = tmp_path / "notes.safetensors"
    not_lora.write_text("hello")
    values = {
        "dit": broken_dit,
        "vae": toy.vae,
        "text_encoder": toy.text_encoder,
        "prompt": "x",
        "save_path": tmp_path / "gen",
        "lora_weight": [not_lora, tmp_path / "missing.safetensors"],
        "include_patterns": ["("],
    }
    with pytest.raises(ConfigError) as caught:
        run("generate", values)
    message = str(caught.value)
    assert "--lora_weight" in message and "missing.safetensors: does not exist" in message
    assert "not a safetensors file" in message


def test_unknown_option_gets_one_line_with_the_closest_name(capsys):
    code = main(["train", "--arch", "toy", "--network_dimm", "8"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "unknown option --network_dimm. Did you mean --network_dim?" in err[0]


def test_a_bad_value_on_the_command_line_is_one_line(capsys):
    code = main(["train", "--arch", "toy", "--network_dim"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--network_dim" in err[0] and "usage:" not in err[0]


def test_string_where_a_number_belongs_in_the_dataset_toml_is_refused(toy, tmp_path):
    dataset = tmp_path / "dataset.toml"
    dataset.write_text(toy.dataset.read_text().replace("batch_size = 2", 'batch_size = "2"'))
    with pytest.raises(ConfigError, match=r"batch_size.*not the string '2' \(remove the quotes\)"):
        run("cache-latents", {"dataset_config": dataset, "vae": toy.vae})


def test_epochs_and_steps_together_say_which_wins(toy, tmp_path, caplog):
    cache_all(toy)
    with caplog.at_level(logging.INFO):
        run("train", train_values(toy, tmp_path / "out", max_train_epochs=1, max_train_steps=50))
    assert "--max_train_epochs 1 sets the length, 3 steps (--max_train_steps is not used)" in caplog.text


def test_sampling_warns_only_when_there_are_no_prompts(toy, tmp_path, caplog):
    cache_all(toy)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red square --w 32 --h 32 --f 5 --s 2 --d 1\n")
    sampling = {
        "max_train_steps": 2,
        "sample_every_n_steps": 2,
        "vae": toy.vae,
        "text_encoder": toy.text_encoder,
    }
    with caplog.at_level(logging.WARNING):
        result = run("train", train_values(toy, tmp_path / "a", sample_prompts=prompts, **sampling))
    assert result.outputs["samples"] and "no samples will be made" not in caplog.text
    with caplog.at_level(logging.WARNING):
        run("train", train_values(toy, tmp_path / "b", **sampling))
    assert "--sample_prompts is not given; no samples will be made" in caplog.text


def test_an_ignored_schedule_option_is_said_once(toy, tmp_path, caplog):
    cache_all(toy)
    with caplog.at_level(logging.WARNING):
        run("train", train_values(toy, tmp_path / "out", max_train_steps=1, lr_scheduler_min_lr_ratio=0.1))
    assert caplog.text.count("--lr_scheduler_min_lr_ratio is ignored") == 1


def test_misspelled_plugin_filter_warns_and_lists_what_is_installed(monkeypatch, caplog):
    from tuner_core import make_plugin_manager

    monkeypatch.setenv("TUNER_LOAD_PLUGINS", "framepak,lora")
    with caplog.at_level(logging.WARNING):
        plugins = make_plugin_manager()
    assert "no installed plugin is called 'framepak' (did you mean 'framepack'?)" in caplog.text
    assert "framepack (tuner-framepack)" in caplog.text and "lora" in plugins.networks()


def test_clip_length_error_says_the_length_is_the_target_frames_default(tmp_path):
    from tuner_core.architecture import MediaRules
    from tuner_core.config.dataset import load_dataset_config
    from tuner_core.data.discovery import discover_items
    from tuner_toy.sample_data import make_sample_dataset

    dataset = make_sample_dataset(tmp_path, videos=1, frames=9, size=32)
    dataset.write_text(dataset.read_text().replace("target_frames = [9]\n", ""))
    settings = load_dataset_config(dataset).datasets[0]
    expected = r"\[1\] \(the default of target_frames, which this dataset does not set\)"
    with pytest.raises(ConfigError, match=expected):
        discover_items(settings, MediaRules(min_frames=37, frame_multiple=4))


def test_version_lists_tuner_and_its_plugins(capsys):
    assert main(["--version"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("tuner 0.1.0") and "tuner-framepack" in out and "tuner-lora" in out
