"""Validated configuration: the core options of each command and the dataset TOML."""
