"""The plugin manager: registries, duplicate names, broken and misspelled plugins, strict mode, filtering."""

from __future__ import annotations

import logging
import pickle
import textwrap
from pathlib import Path
from typing import ClassVar

import pytest

from tuner_cli.show_plugins import describe
from tuner_core import Architecture, PluginError, Plugins, hookimpl, hookspecs, make_plugin_manager
from tuner_core.errors import ConfigError
from tuner_core.memory.strategy import MemorySettings, MemoryStrategy
from tuner_core.network import NetworkType


class TinyArch(Architecture):
    name: ClassVar[str] = "tiny"
    aliases: ClassVar[tuple[str, ...]] = ("tiny-alias",)


class OtherTinyArch(Architecture):
    name: ClassVar[str] = "tiny"


class ArchPlugin:
    @hookimpl
    def tuner_register_architectures(self, register):
        register(TinyArch())


class DuplicatePlugin:
    @hookimpl
    def tuner_register_architectures(self, register):
        register(OtherTinyArch())


def test_hook_tuner_register_architectures_in_test_plugin():
    plugins = make_plugin_manager(entry_points=False, plugins={"arch-plugin": ArchPlugin()})
    arch = plugins.architecture("tiny")
    assert isinstance(arch, TinyArch)
    assert plugins.architecture("tiny-alias") is arch
    assert plugins.architectures().owner("tiny") == "arch-plugin"
    info = {i.name: i for i in describe(plugins)}
    assert info["arch-plugin"].architectures == ("tiny",)
    assert "tuner_register_architectures" in info["arch-plugin"].hooks


def test_unknown_architecture_lists_choices_and_suggests():
    plugins = make_plugin_manager(entry_points=False, plugins={"a": ArchPlugin()})
    with pytest.raises(
        ConfigError, match=r"unknown architecture 'tiyn'.*Did you mean 'tiny'.*Available: tiny"
    ):
        plugins.architecture("tiyn")


def test_duplicate_name_names_both_plugins():
    plugins = make_plugin_manager(
        entry_points=False, plugins={"first": ArchPlugin(), "second": DuplicatePlugin()}
    )
    with pytest.raises(
        PluginError,
        match=r"'tiny' is registered twice: by plugin '(first|second)' and by plugin '(first|second)'",
    ):
        plugins.architectures()


def test_duplicate_alias_is_an_error_too():
    class AliasClash(Architecture):
        name: ClassVar[str] = "tiny-alias"

    class AliasPlugin:
        @hookimpl
        def tuner_register_architectures(self, register):
            register(AliasClash())

    plugins = make_plugin_manager(entry_points=False, plugins={"a": ArchPlugin(), "b": AliasPlugin()})
    with pytest.raises(PluginError, match="tiny-alias"):
        plugins.architectures()


class Misspelled:
    @hookimpl
    def tuner_register_architecture(self, register):  # missing "s"
        raise AssertionError("never called")


def test_misspelled_hookimpl_is_reported_with_a_suggestion(caplog):
    with caplog.at_level(logging.WARNING):
        plugins = make_plugin_manager(entry_points=False, plugins={"typo": Misspelled()})
    assert plugins.unknown_hooks == [("typo", "tuner_register_architecture")]
    assert "did you mean 'tuner_register_architectures'" in caplog.text


def test_misspelled_hookimpl_is_an_error_in_strict_mode():
    with pytest.raises(PluginError, match="unknown hook 'tuner_register_architecture'"):
        make_plugin_manager(entry_points=False, strict=True, plugins={"typo": Misspelled()})


def test_factory_builds_independent_managers():
    one = make_plugin_manager(entry_points=False, plugins={"a": ArchPlugin()})
    two = make_plugin_manager(entry_points=False)
    assert "tiny" in one.architectures()
    assert "tiny" not in two.architectures()


class Net(NetworkType):
    name: ClassVar[str] = "toy-net"
    aliases: ClassVar[tuple[str, ...]] = ("networks.toy",)


class Strategy(MemoryStrategy):
    name: ClassVar[str] = "toy-strategy"

    def enabled(self, settings: MemorySettings) -> bool:
        return settings.fp8_base


def test_hook_tuner_register_networks():
    class P:
        @hookimpl
        def tuner_register_networks(self, register):
            register(Net())

    plugins = make_plugin_manager(entry_points=False, plugins={"p": P()})
    assert plugins.network("networks.toy") is plugins.network("toy-net")


def test_hook_tuner_register_memory_strategies():
    class P:
        @hookimpl
        def tuner_register_memory_strategies(self, register):
            register(Strategy())

    plugins = make_plugin_manager(entry_points=False, plugins={"p": P()})
    strategy = plugins.memory_strategies().get("toy-strategy")
    assert strategy.enabled(MemorySettings(fp8_base=True))
    assert not strategy.enabled(MemorySettings())


def test_registering_plugin_that_raises_is_isolated(caplog):
    class Raises:
        @hookimpl
        def tuner_register_architectures(self, register):
            raise RuntimeError("boom")

    with caplog.at_level(logging.WARNING):
        plugins = make_plugin_manager(entry_points=False, plugins={"bad": Raises(), "good": ArchPlugin()})
        assert plugins.architectures().names() == ["tiny"]
    assert "plugin 'bad' failed in tuner_register_architectures" in caplog.text
    strict = make_plugin_manager(entry_points=False, strict=True, plugins={"bad": Raises()})
    with pytest.raises(PluginError, match="boom"):
        strict.architectures()


def test_plugins_pickle_as_the_call_that_made_them():
    plugins = make_plugin_manager(only=["lora"], plugins={"a": ArchPlugin()})
    again = pickle.loads(pickle.dumps(plugins))
    assert again is not plugins and again.networks().names() == plugins.networks().names()
    assert "lora" in again.networks()
    assert again.architectures().names() == ["tiny"] and again.architectures().owner("tiny") == "a"
    with pytest.raises(TypeError, match="make_plugin_manager"):
        pickle.dumps(Plugins(plugins.manager))


def test_every_per_call_hook_is_answered_last_by_an_architecture_method():
    per_call = {
        name
        for name, spec in vars(hookspecs).items()
        if name.startswith("tuner_") and spec.tuner_spec["firstresult"]
    }
    assert per_call == set(hookspecs.ARCHITECTURE_METHODS)
    assert all(callable(getattr(Architecture, m)) for m in hookspecs.ARCHITECTURE_METHODS.values())


# -- entry points --------------------------------------------------------------------------------------


def make_distribution(root: Path, dist: str, module: str, source: str, ep_name: str | None = None) -> None:
    """Install a fake distribution with a ``tuner`` entry point on a directory that goes on sys.path."""
    info = root / f"{dist.replace('-', '_')}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[tuner]\n{ep_name or module} = {module}\n")
    (root / f"{module}.py").write_text(textwrap.dedent(source))


@pytest.fixture
def broken_plugin(tmp_path, monkeypatch):
    make_distribution(
        tmp_path, "tuner-broken", "tuner_broken_plugin", "raise ImportError('missing dependency xyz')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_plugin_whose_import_raises_is_skipped_with_a_warning(broken_plugin, caplog):
    with caplog.at_level(logging.WARNING):
        plugins = make_plugin_manager()
    assert [f.distribution for f in plugins.failures] == ["tuner-broken"]
    assert "tuner-broken" in caplog.text and "missing dependency xyz" in caplog.text
    # every other architecture keeps working
    assert "framepack" in plugins.architectures()


def test_plugin_whose_import_raises_fails_in_strict_mode(broken_plugin, monkeypatch):
    monkeypatch.setenv("TUNER_STRICT_PLUGINS", "1")
    with pytest.raises(
        PluginError, match=r"'tuner_broken_plugin' from distribution 'tuner-broken' failed to load"
    ):
        make_plugin_manager()


def test_load_plugins_env_restricts_loading(broken_plugin, monkeypatch):
    monkeypatch.setenv("TUNER_LOAD_PLUGINS", "lora")
    plugins = make_plugin_manager()
    assert plugins.failures == []
    assert "framepack" not in plugins.architectures()
    assert "lora" in plugins.networks()
    monkeypatch.setenv("TUNER_LOAD_PLUGINS", "tuner-framepack")  # a distribution name works too
    assert make_plugin_manager().architectures().names() == ["framepack"]
    monkeypatch.setenv("TUNER_LOAD_PLUGINS", "")
    assert len(make_plugin_manager().architectures()) == 0


def test_builtin_plugins_load_through_entry_points():
    plugins = make_plugin_manager()
    info = {i.name: i for i in describe(plugins)}
    assert info["framepack"].distribution == "tuner-framepack"
    assert info["framepack"].architectures == ("framepack",)
    assert info["lora"].distribution == "tuner-lora"
    assert "lora" in info["lora"].networks
