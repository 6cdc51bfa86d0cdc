"""Every per-call hook is how the engine makes that call: a plugin sees (and may answer) each of them."""

from __future__ import annotations

from collections import Counter

import torch
from safetensors.torch import load_file

from tuner_core import hookimpl, make_plugin_manager

from .helpers import cache_all, run, train_values


class Watcher:
    """Answers nothing (returns ``None``), so the architecture still answers; counts what it saw."""

    def __init__(self):
        self.seen = Counter()

    @hookimpl
    def tuner_load_model(self, component):
        self.seen[f"load {component}"] += 1

    @hookimpl
    def tuner_encode_latents(self, samples):
        self.seen["encode_latents"] += len(samples)

    @hookimpl
    def tuner_encode_text(self, captions):
        self.seen["encode_text"] += len(captions)

    @hookimpl
    def tuner_batch_item(self, latent_tensors):
        self.seen["batch_item"] += 1

    @hookimpl
    def tuner_noisy_input(self, noisy):
        self.seen["noisy_input"] += 1

    @hookimpl
    def tuner_predict(self, noisy_latents):
        self.seen["predict"] += 1

    @hookimpl
    def tuner_training_target(self, latents, noise):
        self.seen["training_target"] += 1

    @hookimpl
    def tuner_compute_loss(self, prediction):
        self.seen["compute_loss"] += 1

    @hookimpl
    def tuner_sample(self, requests):
        self.seen["sample"] += len(requests)

    @hookimpl
    def tuner_decode_latents(self, latents):
        self.seen["decode_latents"] += 1


def test_hooks_are_called_by_the_engine_through_plugins(toy, tmp_path):
    watcher = Watcher()
    plugins = make_plugin_manager(plugins=[watcher])
    run("cache-latents", {"dataset_config": toy.dataset, "vae": toy.vae}, plugins)
    run("cache-text", {"dataset_config": toy.dataset, "text_encoder": toy.text_encoder}, plugins)
    out = tmp_path / "out"
    run("train", train_values(toy, out, max_train_steps=2), plugins)
    generate = {"dit": toy.dit, "vae": toy.vae, "text_encoder": toy.text_encoder, "prompt": "a red square"}
    run(
        "generate",
        {**generate, "save_path": tmp_path / "gen", "lora_weight": [out / "last.safetensors"]},
        plugins,
    )
    seen = watcher.seen
    assert seen["encode_latents"] == 6 and seen["encode_text"] == 6
    assert seen["batch_item"] == 4  # 2 steps of batches of 2
    assert seen["noisy_input"] == seen["predict"] == seen["training_target"] == seen["compute_loss"] == 2
    assert seen["load dit"] == 2 and seen["load vae"] == 2
    assert seen["sample"] == seen["decode_latents"] == 1


def test_a_plugin_can_take_over_the_training_target(toy, tmp_path):
    class ZeroTarget:
        @hookimpl
        def tuner_training_target(self, latents):
            return latents * 0  # its own target: the loss becomes |prediction|^2

    cache_all(toy)
    values = train_values(toy, tmp_path / "a", max_train_steps=2)
    run("train", values)
    run("train", {**values, "output_dir": tmp_path / "b"}, make_plugin_manager(plugins=[ZeroTarget()]))
    a, b = (load_file(str(tmp_path / d / "last.safetensors")) for d in "ab")
    assert a.keys() == b.keys() and any(not torch.equal(a[k], b[k]) for k in a)


def test_a_plugin_can_keep_a_clean_conditioning_frame(toy, tmp_path):
    import attrs

    class CleanFirstFrame:
        @hookimpl
        def tuner_noisy_input(self, batch, noisy):
            mixed = noisy.noisy_latents.clone()
            mixed[:, :, :1] = batch["latents"][:, :, :1].float()  # the first latent frame stays clean
            return attrs.evolve(noisy, noisy_latents=mixed)

    cache_all(toy)
    values = train_values(toy, tmp_path / "a", max_train_steps=2)
    run("train", values)
    run("train", {**values, "output_dir": tmp_path / "b"}, make_plugin_manager(plugins=[CleanFirstFrame()]))
    a, b = (load_file(str(tmp_path / d / "last.safetensors")) for d in "ab")
    assert any(not torch.equal(a[k], b[k]) for k in a)
