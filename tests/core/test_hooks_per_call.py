"""Per-call hooks answer through the architecture by default; another plugin may answer first."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import torch

from tuner_core import Architecture, CacheRecord, SampleRequest, TrainingRun, hookimpl, make_plugin_manager


class EchoArch(Architecture):
    name: ClassVar[str] = "echo"

    def load_component(self, component, options, device, transform=None):
        return ("arch", component, str(device))

    def encode_latents(self, samples, models, options):
        return [[CacheRecord(f"{s}.safetensors", {"x": torch.zeros(1)})] for s in samples]

    def encode_text(self, captions, models, options):
        return [{"len": torch.tensor(len(c))} for c in captions]

    def sample(self, models, requests, options, generators):
        return [torch.full((1, 1, 2, 2), float(i)) for i, _ in enumerate(requests)]

    def decode_latents(self, models, latents, options, sink):
        sink(latents.expand(3, -1, -1, -1))


CPU = torch.device("cpu")


class Options:
    weighting_scheme = "none"


def manager(*extra):
    class Register:
        @hookimpl
        def tuner_register_architectures(self, register):
            register(EchoArch())

    return make_plugin_manager(entry_points=False, plugins=[Register(), *extra])


def test_hook_tuner_load_model_defaults_to_architecture_and_can_be_taken_over():
    plugins = manager()
    arch = plugins.architecture("echo")
    assert plugins.hook.tuner_load_model(
        architecture=arch, component="vae", options=None, device=CPU, transform=None
    ) == (
        "arch",
        "vae",
        "cpu",
    )

    class GgufLoader:
        @hookimpl
        def tuner_load_model(self, component):
            return "gguf" if component == "dit" else None

    plugins = manager(GgufLoader())
    arch = plugins.architecture("echo")
    assert (
        plugins.hook.tuner_load_model(
            architecture=arch, component="dit", options=None, device=CPU, transform=None
        )
        == "gguf"
    )
    assert (
        plugins.hook.tuner_load_model(
            architecture=arch, component="vae", options=None, device=CPU, transform=None
        )[0]
        == "arch"
    )


def test_hook_tuner_encode_latents():
    plugins = manager()
    records = plugins.hook.tuner_encode_latents(
        architecture=plugins.architecture("echo"), samples=["a", "b"], models={}, options=None
    )
    assert [r[0].name for r in records] == ["a.safetensors", "b.safetensors"]


def test_hook_tuner_encode_text():
    plugins = manager()
    out = plugins.hook.tuner_encode_text(
        architecture=plugins.architecture("echo"), captions=["abc", "de"], models={}, options=None
    )
    assert [int(o["len"]) for o in out] == [3, 2]


def test_hook_tuner_compute_loss_default_and_override():
    plugins = manager()
    arch = plugins.architecture("echo")
    pred, target = torch.ones(2, 3), torch.zeros(2, 3)
    loss = plugins.hook.tuner_compute_loss(
        architecture=arch,
        prediction=pred,
        target=target,
        sigmas=torch.full((2,), 0.5),
        batch={},
        options=Options(),
    )
    assert loss.item() == 1.0

    class L1:
        @hookimpl
        def tuner_compute_loss(self, prediction, target):
            return (prediction - target).abs().sum()

    plugins = manager(L1())
    loss = plugins.hook.tuner_compute_loss(
        architecture=plugins.architecture("echo"),
        prediction=pred,
        target=target,
        sigmas=torch.ones(2),
        batch={},
        options=Options(),
    )
    assert loss.item() == 6.0


def test_hook_tuner_sample_and_tuner_decode_latents():
    plugins = manager()
    arch = plugins.architecture("echo")
    latents = list(
        plugins.hook.tuner_sample(
            architecture=arch,
            models={},
            requests=[SampleRequest(prompt="p"), SampleRequest(prompt="q")],
            options=None,
            generators=[torch.Generator(), torch.Generator()],
        )
    )
    assert [float(x.mean()) for x in latents] == [0.0, 1.0]
    pieces = []
    plugins.hook.tuner_decode_latents(
        architecture=arch, models={}, latents=latents[1], options=None, sink=pieces.append
    )
    assert pieces[0].shape == (3, 1, 2, 2)

    class Preview:
        @hookimpl
        def tuner_decode_latents(self, latents, sink):
            sink(latents.new_zeros(3, 1, 1, 1))  # a plugin may decode in its own way
            return True

    plugins = manager(Preview())
    pieces = []
    plugins.hook.tuner_decode_latents(
        architecture=plugins.architecture("echo"),
        models={},
        latents=latents[0],
        options=None,
        sink=pieces.append,
    )
    assert [p.shape for p in pieces] == [(3, 1, 1, 1)]


def test_hook_tuner_batch_item_tuner_predict_tuner_training_target_default_to_the_architecture():
    class Arch(EchoArch):
        name: ClassVar[str] = "echo"

        def batch_item(self, latent_tensors, text_tensors):
            return {"latents": latent_tensors["x"] + text_tensors["t"]}

        def predict(self, model, batch, noisy_latents, timesteps, options):
            return model(noisy_latents) * timesteps

    class Register:
        @hookimpl
        def tuner_register_architectures(self, register):
            register(Arch())

    plugins = make_plugin_manager(entry_points=False, plugins=[Register()])
    arch = plugins.architecture("echo")
    item = plugins.hook.tuner_batch_item(
        architecture=arch, latent_tensors={"x": torch.ones(2)}, text_tensors={"t": torch.ones(2)}
    )
    assert torch.equal(item["latents"], torch.full((2,), 2.0))
    prediction = plugins.hook.tuner_predict(
        architecture=arch,
        model=lambda x: 2 * x,
        batch={},
        noisy_latents=torch.ones(2),
        timesteps=torch.full((2,), 3.0),
        options=None,
    )
    assert torch.equal(prediction, torch.full((2,), 6.0))
    target = plugins.hook.tuner_training_target(
        architecture=arch, batch={}, latents=torch.ones(2), noise=torch.zeros(2)
    )
    assert torch.equal(target, -torch.ones(2))


class Recorder:
    def __init__(self):
        self.calls = []

    @hookimpl
    def tuner_on_train_start(self, run):
        self.calls.append(("start", run.global_step))

    @hookimpl
    def tuner_on_step_end(self, run, step, metrics):
        self.calls.append(("step", step, metrics["loss"]))

    @hookimpl
    def tuner_on_save(self, path, kind):
        self.calls.append(("save", path.name, kind))

    @hookimpl
    def tuner_on_sample(self, paths, step):
        self.calls.append(("sample", len(paths), step))


def test_hook_tuner_on_train_start_tuner_on_step_end_tuner_on_save_tuner_on_sample_broadcast():
    first, second = Recorder(), Recorder()
    plugins = make_plugin_manager(entry_points=False, plugins=[first, second])
    run = TrainingRun(options=None, architecture=None, output_dir=Path("."))
    plugins.hook.tuner_on_train_start(run=run)
    plugins.hook.tuner_on_step_end(run=run, step=1, metrics={"loss": 0.5})
    plugins.hook.tuner_on_save(run=run, path=Path("w.safetensors"), kind="weights")
    plugins.hook.tuner_on_sample(run=run, paths=[Path("a.mp4")], step=1)
    expected = [("start", 0), ("step", 1, 0.5), ("save", "w.safetensors", "weights"), ("sample", 1, 1)]
    assert first.calls == expected and second.calls == expected
