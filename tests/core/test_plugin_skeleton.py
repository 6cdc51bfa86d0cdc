"""The skeleton architecture of docs/writing-plugins.md runs as written: cache-latents, cache-text, train."""

from __future__ import annotations

import re
import types
from pathlib import Path

from tuner_cli.parser import build_command_options
from tuner_core import hookimpl, make_plugin_manager
from tuner_core.commands.run import run_command
from tuner_toy.sample_data import make_sample_dataset

DOC = Path(__file__).resolve().parents[2] / "docs" / "writing-plugins.md"


def skeleton_module() -> types.ModuleType:
    blocks = re.findall(r"```python\n(# tuner_myarch/architecture\.py\n.*?)```", DOC.read_text(), re.S)
    assert len(blocks) == 1, "docs/writing-plugins.md must hold exactly one architecture.py block"
    module = types.ModuleType("tuner_myarch_architecture")
    exec(compile(blocks[0], str(DOC), "exec"), module.__dict__)
    return module


def test_the_documented_skeleton_caches_and_trains(tmp_path):
    skeleton = skeleton_module()

    class Register:
        @hookimpl
        def tuner_register_architectures(self, register):
            register(skeleton.MyArchitecture())

    plugins = make_plugin_manager(entry_points=True, plugins=[Register()])
    architecture = plugins.architecture("myarch")
    dataset = make_sample_dataset(tmp_path / "data", videos=4, frames=9, size=32)

    def run(command, values):
        options = build_command_options(command, architecture, values, {}, None, plugins.memory_strategies())
        return run_command(command, options, architecture=architecture, plugins=plugins)

    assert run("cache-latents", {"dataset_config": dataset}).counts["encoded"] == 4
    assert run("cache-text", {"dataset_config": dataset}).counts["encoded"] == 4
    caches = sorted(p.name for p in (tmp_path / "data" / "cache").iterdir())
    assert any(n.endswith("_my.safetensors") for n in caches) and any(
        n.endswith("_my_te.safetensors") for n in caches
    )
    out = tmp_path / "out"
    result = run(
        "train",
        {
            "dataset_config": dataset,
            "output_dir": out,
            "network_module": "lora",
            "max_train_steps": 3,
            "learning_rate": 1e-3,
            "max_data_loader_n_workers": 0,
        },
    )
    assert result.counts["steps"] == 3 and (out / "last.safetensors").is_file()
