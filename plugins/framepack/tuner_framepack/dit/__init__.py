"""FramePack's packed HunyuanVideo DiT: the model, its config, and its loader."""

from tuner_framepack.dit.config import DiTConfig
from tuner_framepack.dit.double_block import HunyuanVideoTransformerBlock
from tuner_framepack.dit.loader import load_dit
from tuner_framepack.dit.model import HunyuanVideoTransformer3DModelPacked
from tuner_framepack.dit.single_block import HunyuanVideoSingleTransformerBlock

__all__ = [
    "DiTConfig",
    "HunyuanVideoSingleTransformerBlock",
    "HunyuanVideoTransformer3DModelPacked",
    "HunyuanVideoTransformerBlock",
    "load_dit",
]
