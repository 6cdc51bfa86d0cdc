"""A memory strategy's own options: declared per command, shown in --help, validated, and read back by the
strategy from ``settings.options`` during a real (toy) training run."""

from __future__ import annotations

import copy
import pickle
import re
import subprocess
import sys
import textwrap
import types
from pathlib import Path
from typing import ClassVar

import attrs
import pytest

import tuner_cli.main as cli
from tuner_cli.parser import build_command_options
from tuner_core import MemoryStrategy, at_least, hookimpl, make_plugin_manager, option
from tuner_core.commands import options_class
from tuner_core.commands.run import run_command
from tuner_core.errors import PluginError
from tuner_core.memory.strategy_options import strategy_settings
from tuner_core.training.model_setup import memory_settings
from tuner_toy.build import make_toy_models
from tuner_toy.options import ToyTrainOptions
from tuner_toy.sample_data import make_sample_dataset

REPO = Path(__file__).resolve().parents[2]


@attrs.frozen(kw_only=True, slots=False)
class OffloadOptions:
    offload_optimizer_states: bool = option(False, help="Keep the optimizer states in host memory.")
    offload_chunk_mib: int = option(64, help="Size of one copy to the host, in MiB.", validator=at_least(1))


class OffloadOptimizerStates(MemoryStrategy):
    """Records what it read; acts on nothing."""

    name: ClassVar[str] = "offload-optimizer-states"
    options: ClassVar = {"train": OffloadOptions}

    def __init__(self) -> None:
        self.seen: list[tuple[str, bool, int]] = []

    def enabled(self, settings):
        if not settings.training:  # its options exist in train only
            return False
        own = settings.options
        self.seen.append(("enabled", own.offload_optimizer_states, own.offload_chunk_mib))
        return own.offload_optimizer_states

    def apply(self, model, layout, settings, device):
        own = settings.options
        self.seen.append(("apply", own.offload_optimizer_states, own.offload_chunk_mib))


class Register:
    """A plugin that registers the strategies it is given."""

    def __init__(self, *strategies: MemoryStrategy) -> None:
        self.strategies = strategies

    @hookimpl
    def tuner_register_memory_strategies(self, register):
        for strategy in self.strategies:
            register(strategy)


def strategy_with(mixin: type, name: str = "other") -> MemoryStrategy:
    """A strategy called ``name`` that adds ``mixin`` to train."""
    return type("Other", (MemoryStrategy,), {"name": name, "options": {"train": mixin}})()


@pytest.fixture
def strategy(monkeypatch) -> OffloadOptimizerStates:
    """The test strategy, installed (with the entry-point plugins, the toy among them) for the CLI too."""
    strategy = OffloadOptimizerStates()
    monkeypatch.setattr(cli, "make_plugin_manager", lambda: make_plugin_manager(plugins=[Register(strategy)]))
    return strategy


@pytest.fixture
def toy_arch(strategy):
    return cli.make_plugin_manager().architecture("toy")


def tuner(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_strategy_options_are_listed_in_help_under_their_own_heading(strategy, capsys):
    code, out, _ = tuner(capsys, "train", "--arch", "toy", "--help")
    assert code == 0
    assert "memory options (from offload-optimizer-states):" in out
    assert "--offload_optimizer_states" in out and "(default: 64)" in out
    assert "toy options:" in out and "--dit" in out  # the architecture's options keep their heading
    assert "--offload_chunk_mib" in tuner(capsys, "train", "--help")[1]  # without --arch too
    code, out, _ = tuner(capsys, "generate", "--arch", "toy", "--help")
    assert code == 0 and "--offload_chunk_mib" not in out  # declared for train only


def test_a_bad_value_is_a_one_line_error_naming_the_option(strategy, capsys):
    code, _, err = tuner(capsys, "train", "--arch", "toy", "--offload_chunk_mib", "lots")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "option --offload_chunk_mib got 'lots'" in err and "an integer" in err


def test_a_config_file_sets_it_and_the_strategy_reads_it_in_a_toy_training_run(strategy, tmp_path, capsys):
    dataset = make_sample_dataset(tmp_path, videos=2, frames=9, size=32)
    models = make_toy_models(tmp_path / "models")
    plugins = cli.make_plugin_manager()
    toy = plugins.architecture("toy")
    for command, values in {
        "cache-latents": {"dataset_config": dataset, "vae": models.vae},
        "cache-text": {"dataset_config": dataset, "text_encoder": models.text_encoder},
    }.items():
        run_command(
            command, build_command_options(command, toy, values, {}, None), architecture=toy, plugins=plugins
        )
    config = tmp_path / "train.toml"
    config.write_text(
        textwrap.dedent(
            f"""
            arch = "toy"
            dataset_config = "{dataset}"
            dit = "{models.dit}"
            output_dir = "{tmp_path / "out"}"
            max_train_steps = 1
            max_data_loader_n_workers = 0
            network_module = "lora"
            [memory]
            offload_optimizer_states = true
            """
        )
    )
    code, _, err = tuner(capsys, "train", "--config_file", str(config), "--offload_chunk_mib", "3")
    assert code == 0, err
    assert ("enabled", True, 3) in strategy.seen and ("apply", True, 3) in strategy.seen


def test_a_clash_with_a_core_architecture_or_strategy_option_names_both(strategy, toy_arch):
    @attrs.frozen(kw_only=True, slots=False)
    class Core:
        learning_rate: float = option(1.0, help="x")

    @attrs.frozen(kw_only=True, slots=False)
    class Arch:
        dit: str = option("", help="x")

    @attrs.frozen(kw_only=True, slots=False)
    class Twin:
        offload_chunk_mib: int = option(1, help="x")

    cases = {
        Core: "which the core's TrainOptions already declares",
        Arch: "which architecture 'toy' (ToyTrainOptions) already declares",
        Twin: "which memory strategy 'offload-optimizer-states' already declares",
    }
    for mixin, said in cases.items():
        with pytest.raises(PluginError, match="^memory strategy 'zz-other' declares option --") as caught:
            options_class("train", toy_arch, [strategy, strategy_with(mixin, "zz-other")])
        assert said in str(caught.value)


def test_mixins_that_cannot_be_mixed_in_are_refused(toy_arch):
    @attrs.frozen(kw_only=True)
    class Slotted:
        x: int = option(1, help="x")

    @attrs.frozen(kw_only=True, slots=False)
    class Required:
        x: int = option(help="x")

    for mixin, said in {
        Slotted: "slotted class",
        Required: "--x needs a default",
        int: "not an attrs",
    }.items():
        with pytest.raises(PluginError, match=said):
            options_class("train", toy_arch, [strategy_with(mixin)])
    wrong = type("W", (MemoryStrategy,), {"name": "w", "options": {"cache-latents": OffloadOptions}})()
    with pytest.raises(PluginError, match="act only in train and generate"):
        options_class("train", toy_arch, [wrong])


def test_the_composed_class_is_one_class_and_without_strategy_options_the_class_is_unchanged(
    strategy, toy_arch
):
    plain = type("Plain", (MemoryStrategy,), {"name": "plain"})()
    assert options_class("train", toy_arch) is ToyTrainOptions
    assert options_class("train", toy_arch, [plain]) is ToyTrainOptions
    cls = options_class("train", toy_arch, [plain, strategy])
    assert cls is options_class("train", toy_arch, [strategy, plain, strategy])
    assert issubclass(cls, ToyTrainOptions) and issubclass(cls, OffloadOptions)


def train_options(toy_arch, strategies, tmp_path, **values):
    values = {"dataset_config": tmp_path, "dit": tmp_path, "output_dir": tmp_path, **values}
    return build_command_options("train", toy_arch, values, {}, None, strategies)


def test_options_pickle_copy_and_evolve_even_in_a_fresh_process(strategy, toy_arch, tmp_path):
    options = train_options(toy_arch, [strategy], tmp_path, offload_chunk_mib=5)
    assert pickle.loads(pickle.dumps(options)) == options == copy.deepcopy(options)
    assert attrs.evolve(options, offload_chunk_mib=6).offload_chunk_mib == 6
    (tmp_path / "options.pickle").write_bytes(pickle.dumps(options))
    # A spawned worker has never composed the class: unpickling composes it again from its parts.
    check = (
        "import pickle, sys; o = pickle.load(open(sys.argv[1], 'rb'));"
        "assert (o.offload_chunk_mib, o.dit.name) == (5, sys.argv[2]), o; print(type(o).__name__)"
    )
    done = subprocess.run(
        [sys.executable, "-c", check, str(tmp_path / "options.pickle"), tmp_path.name],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ToyTrainOptions[OffloadOptions]"


def test_options_built_without_the_strategies_are_refused_clearly(strategy, toy_arch, tmp_path):
    built = train_options(toy_arch, (), tmp_path)
    with pytest.raises(PluginError, match="pass strategies=plugins.memory_strategies"):
        strategy_settings(strategy, memory_settings(built, training=True))
    own = strategy_settings(
        strategy, memory_settings(train_options(toy_arch, [strategy], tmp_path), training=True)
    )
    assert own.options.offload_chunk_mib == 64 and own.options.dit == tmp_path


def test_the_documented_strategy_adds_its_option_and_reads_it(toy_arch, tmp_path):
    doc = (REPO / "docs" / "writing-plugins.md").read_text(encoding="utf-8")
    (block,) = re.findall(r"```python\n(# tuner_mymemory/plugin\.py\n.*?)```", doc, re.S)
    plugin = types.ModuleType("tuner_mymemory_plugin")
    exec(compile(block, "docs/writing-plugins.md", "exec"), plugin.__dict__)
    strategies = make_plugin_manager(entry_points=False, plugins=[plugin]).memory_strategies()
    options = train_options(toy_arch, strategies, tmp_path, empty_cache_every=4)
    documented = strategies.get("empty-cache")
    settings = strategy_settings(documented, memory_settings(options, training=True))
    assert documented.enabled(settings) and not documented.enabled(memory_settings(options, training=False))
