"""The ``tuner`` command-line interface (import name ``tuner_cli``)."""
