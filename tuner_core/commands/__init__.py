"""The library face of every CLI command: typed functions an embedding program calls directly."""

from __future__ import annotations

from tuner_core.config.cache_options import CacheLatentsOptions, CacheTextOptions
from tuner_core.config.generate_options import GenerateOptions
from tuner_core.config.train_options import TrainOptions

#: The core options class of each architecture command.
COMMAND_OPTIONS: dict[str, type] = {
    "cache-latents": CacheLatentsOptions,
    "cache-text": CacheTextOptions,
    "train": TrainOptions,
    "generate": GenerateOptions,
}
