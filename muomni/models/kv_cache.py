"""A static key/value cache: preallocated once, updated in place by position.

Fixed shapes are the point: the decode step sees the same tensor sizes at every token, so it compiles
once (and can be captured as a CUDA graph). Keys and values are stored with ``n_kv_heads`` heads, not
``n_heads``: grouped-query attention shrinks the cache by ``n_heads / n_kv_heads``.
"""

from __future__ import annotations

import torch
from torch import nn


class KVCache(nn.Module):
    """Keys and values of one attention layer for ``max_batch`` rows and ``max_len`` positions."""

    def __init__(
        self, max_batch: int, n_kv_heads: int, max_len: int, head_dim: int, dtype: torch.dtype, device: torch.device
    ) -> None:
        super().__init__()
        shape = (max_batch, n_kv_heads, max_len, head_dim)  # [B, H_kv, S, Dh]
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device), persistent=False)

    def update(self, input_pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write ``k, v`` [B, H_kv, T, Dh] at slots ``input_pos`` [T]; return the whole cache [B, H_kv, S, Dh]."""
        batch = k.shape[0]
        self.k[:batch].index_copy_(2, input_pos, k.to(self.k.dtype))
        self.v[:batch].index_copy_(2, input_pos, v.to(self.v.dtype))
        return self.k[:batch], self.v[:batch]

    def reset(self) -> None:
        self.k.zero_()
        self.v.zero_()
