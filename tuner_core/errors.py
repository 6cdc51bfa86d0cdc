"""Exceptions the core raises. The CLI turns each into one readable message and an exit code."""

from __future__ import annotations


class TunerError(Exception):
    """Base class of every error tuner reports to a user (never a bug in tuner itself)."""

    exit_code = 1


class ConfigError(TunerError):
    """An option, a config file or a dataset TOML holds a value tuner cannot accept."""

    exit_code = 2


class PluginError(TunerError):
    """A plugin failed to load, registered a duplicate name, or implements a hook that does not exist."""


class NotAvailableError(TunerError):
    """A command or feature was asked for that this installation does not provide (yet)."""

    exit_code = 2


class NotSupportedError(NotAvailableError):
    """The selected architecture does not do what was asked (a method its plugin does not implement)."""


class DataError(TunerError):
    """Input data (a video, an image, a caption, a cache file) cannot be used."""


class ModelLoadError(TunerError):
    """A weights file is missing, of the wrong model, or does not match the expected layout."""
