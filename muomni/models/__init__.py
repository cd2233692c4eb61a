"""The μOmni Thinker and its parts."""

from muomni.models.kv_cache import KVCache
from muomni.models.thinker import Block, Thinker, ThinkerModel, checkpoint_blocks

__all__ = ["Block", "KVCache", "Thinker", "ThinkerModel", "checkpoint_blocks"]
