"""tuner's architecture-neutral core: plugin system, configs, data, cache store and training engine.

The public API that plugins and embedding programs use: the names in ``__all__`` below, and the
submodules in :data:`PUBLIC_MODULES` with their own ``__all__``. Everything else may change without notice
(a test checks that the built-in plugins and the toy import nothing else).
"""

from tuner_core.architecture import COMMANDS, Architecture, MediaRules, ModelLayout
from tuner_core.cache.naming import CacheNaming, LatentCacheName
from tuner_core.cache.record import CacheRecord
from tuner_core.components import Components
from tuner_core.config.cache_options import CacheLatentsOptions, CacheTextOptions
from tuner_core.config.dataset import DatasetConfig, DatasetSettings, load_dataset_config
from tuner_core.config.generate_options import GenerateOptions
from tuner_core.config.train_options import TrainOptions
from tuner_core.data.items import MediaItem, MediaSample
from tuner_core.errors import (
    ConfigError,
    DataError,
    ModelLoadError,
    NotAvailableError,
    PluginError,
    TunerError,
)
from tuner_core.hookspecs import hookimpl
from tuner_core.memory.fp8 import fp8_linear_transform, use_fp8_linears
from tuner_core.memory.fp8_format import FP8_DTYPES
from tuner_core.memory.strategy import MemorySettings, MemoryStrategy
from tuner_core.network import ConvertedWeights, Network, NetworkType
from tuner_core.options import at_least, build_options, option
from tuner_core.plugins import Plugins, make_plugin_manager
from tuner_core.sampling.request import SampleRequest
from tuner_core.training.run import TrainingRun
from tuner_core.training.timesteps import shift_sigmas

#: Submodules plugins may import from (each documents its names in ``__all__``).
PUBLIC_MODULES = (
    "tuner_core.attention",  # attention backends (sdpa, flash, sage, xformers) behind one call
    "tuner_core.media",  # reading and writing images and videos
    "tuner_core.sampling",  # flow-matching sigma schedules, solvers (UniPC, Euler) and guidance
    "tuner_core.weights",  # reading checkpoints in every format, streaming them into models, saving
)

__all__ = [
    "COMMANDS",
    "Architecture",
    "CacheLatentsOptions",
    "CacheNaming",
    "CacheRecord",
    "CacheTextOptions",
    "Components",
    "ConvertedWeights",
    "ConfigError",
    "FP8_DTYPES",
    "DataError",
    "DatasetConfig",
    "DatasetSettings",
    "GenerateOptions",
    "LatentCacheName",
    "MediaItem",
    "MediaRules",
    "MediaSample",
    "MemorySettings",
    "MemoryStrategy",
    "ModelLayout",
    "ModelLoadError",
    "Network",
    "NetworkType",
    "NotAvailableError",
    "PluginError",
    "Plugins",
    "SampleRequest",
    "TrainOptions",
    "TrainingRun",
    "PUBLIC_MODULES",
    "TunerError",
    "at_least",
    "build_options",
    "fp8_linear_transform",
    "hookimpl",
    "load_dataset_config",
    "make_plugin_manager",
    "option",
    "shift_sigmas",
    "use_fp8_linears",
]
