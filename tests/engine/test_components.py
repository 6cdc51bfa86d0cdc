"""Components load when first asked for (through the hook), once, and can be released."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch

from tuner_core import hookimpl, make_plugin_manager
from tuner_core.components import Components


class CountingLoader:
    def __init__(self):
        self.loads = []

    @hookimpl
    def tuner_load_model(self, component, device):
        self.loads.append((component, str(device)))  # answers None: the toy architecture loads it


def components(toy, loader):
    plugins = make_plugin_manager(plugins=[loader])
    architecture = plugins.architecture("toy")
    options = {"dit": toy.dit, "vae": toy.vae, "text_encoder": toy.text_encoder}
    from .helpers import build_command_options_for

    combined = build_command_options_for(
        "generate", architecture, {**options, "prompt": "x", "save_path": toy.root}
    )
    return Components(architecture, plugins, combined, torch.device("cpu"), ("dit", "vae", "text_encoder"))


def test_components_load_on_first_use_once_and_release(toy):
    loader = CountingLoader()
    models = components(toy, loader)
    assert models.loaded == () and "vae" in models and loader.loads == []
    vae = models["vae"]
    assert models["vae"] is vae and loader.loads == [("vae", "cpu")]
    gone = weakref.ref(vae)
    del vae
    models.release("vae")
    gc.collect()
    assert gone() is None and models.loaded == ()
    models.load("vae", device=torch.device("cpu"))
    assert loader.loads == [("vae", "cpu"), ("vae", "cpu")]


def test_an_unknown_component_is_a_clear_error(toy):
    with pytest.raises(KeyError, match="'unet' is not a component of this command"):
        components(toy, CountingLoader())["unet"]


def test_a_memory_strategy_rewrites_the_trained_weights_while_they_load(toy, tmp_path):
    from tuner_core import MemoryStrategy

    from .helpers import cache_all, run, train_values

    class HalveBlocks(MemoryStrategy):
        name = "halve-blocks"

        def __init__(self):
            self.seen = []

        def enabled(self, settings):
            return settings.training

        def transform_tensor(self, key, tensor, layout, settings):
            self.seen.append(key)
            return {key: tensor / 2 if key.startswith("blocks.") else tensor}

        def apply(self, model, layout, settings, device):
            self.applied_to = type(model).__name__

    strategy = HalveBlocks()

    class Register:
        @hookimpl
        def tuner_register_memory_strategies(self, register):
            register(strategy)

    cache_all(toy)
    run(
        "train",
        train_values(toy, tmp_path / "out", max_train_steps=1),
        make_plugin_manager(plugins=[Register()]),
    )
    assert any(k.startswith("blocks.") for k in strategy.seen) and "x_embedder.weight" in strategy.seen
    assert strategy.applied_to == "ToyDenoiser"


def test_a_memory_strategy_acts_around_every_block_forward_and_backward(toy, tmp_path):
    from tuner_core import MemoryStrategy

    from .helpers import cache_all, run, train_values

    class Recorder(MemoryStrategy):
        name = "recorder"

        def __init__(self):
            self.calls = []

        def enabled(self, settings):
            return settings.training

        def apply(self, model, layout, settings, device):
            pass

        def before_block(self, index, block, *, backward):
            self.calls.append(("before", index, backward))

        def after_block(self, index, block, *, backward):
            self.calls.append(("after", index, backward))

    recorder = Recorder()

    class Register:
        @hookimpl
        def tuner_register_memory_strategies(self, register):
            register(recorder)

    cache_all(toy)
    run(
        "train",
        train_values(toy, tmp_path / "out", max_train_steps=1),
        make_plugin_manager(plugins=[Register()]),
    )
    forward = [("before", 0, False), ("after", 0, False), ("before", 1, False), ("after", 1, False)]
    backward = [("before", 1, True), ("after", 1, True), ("before", 0, True), ("after", 0, True)]
    assert recorder.calls == forward + backward  # the toy has 2 blocks; blocks come back in reverse
