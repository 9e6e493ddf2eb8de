"""Meta-format checkpoints: params.json -> ModelConfig, shard discovery, split layout, lazy loading, merge/split."""

from llamakit.checkpoint.params import ModelConfig, load_params, PRESETS
from llamakit.checkpoint.shards import Checkpoint, open_checkpoint, find_shards, load_shard

__all__ = ["ModelConfig", "load_params", "PRESETS", "Checkpoint", "open_checkpoint", "find_shards", "load_shard"]
