"""Checkpoint handling for every architecture: find the files, read them safely, stream them into a model.

Typical use::

    files = resolve_checkpoint(path)            # a file, a shard of a set, an index or a snapshot directory
    with torch.device("meta"):
        model = MyModel(config)                 # no memory yet
    with open_checkpoint(files) as source:
        load_into_model(model, source, device="cuda", dtype=torch.bfloat16)
"""

from tuner_core.atomic import atomic_write
from tuner_core.cache.store import file_identity
from tuner_core.weights.files import CheckpointFiles, resolve_checkpoint, shard_files
from tuner_core.weights.layers import checkpoint_layer_paths, layer_paths
from tuner_core.weights.reader import (
    SafetensorsSource,
    StateDictSource,
    TensorInfo,
    TensorSource,
    load_pt_state_dict,
    open_checkpoint,
)
from tuner_core.weights.save import save_json, save_safetensors, save_sharded_safetensors
from tuner_core.weights.sniff import describe_start, not_a_checkpoint, sniff_format
from tuner_core.weights.stream import (
    LoadResult,
    StoredPlan,
    Transform,
    chain_transforms,
    load_into_model,
    mismatch_error,
)

__all__ = [
    "CheckpointFiles",
    "LoadResult",
    "SafetensorsSource",
    "StateDictSource",
    "StoredPlan",
    "TensorInfo",
    "TensorSource",
    "Transform",
    "atomic_write",
    "chain_transforms",
    "checkpoint_layer_paths",
    "describe_start",
    "file_identity",
    "layer_paths",
    "load_into_model",
    "load_pt_state_dict",
    "mismatch_error",
    "not_a_checkpoint",
    "open_checkpoint",
    "resolve_checkpoint",
    "save_json",
    "save_safetensors",
    "save_sharded_safetensors",
    "shard_files",
    "sniff_format",
]
