"""The fused attention input of a decode step (RMSNorm, q/k/v projections, RoPE, cache write) against the
eager modules it replaces.

Like the split-KV tests, this runs the Triton kernel on a GPU, or in Triton's interpreter on the CPU.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton", reason="the kernel is Triton's")

from muomni.models.kv_cache import KVCache  # noqa: E402
from muomni.models.layers import Attention, RMSNorm, apply_rope, rope_tables  # noqa: E402
from muomni.models.triton_decode import norm_qkv_rope  # noqa: E402

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"


def _reference(attn: Attention, norm: RMSNorm, x: torch.Tensor, cos, sin, pos: int, cache: KVCache) -> torch.Tensor:
    """What the eager modules compute: q [B, H, 1, Dh]; the new key/value written to ``cache`` at ``pos``."""
    b = x.shape[0]
    h = norm(x[:, None])  # [B, 1, D]
    q = attn.q_proj(h).view(b, 1, attn.n_heads, attn.head_dim).transpose(1, 2)
    k = attn.k_proj(h).view(b, 1, attn.n_kv_heads, attn.head_dim).transpose(1, 2)
    v = attn.v_proj(h).view(b, 1, attn.n_kv_heads, attn.head_dim).transpose(1, 2)
    q, k = apply_rope(q, cos[None], sin[None]), apply_rope(k, cos[None], sin[None])
    cache.update(torch.tensor([pos], device=x.device), k, v)
    return q


@pytest.mark.parametrize(
    ("batch", "d_model", "heads", "kv_heads", "bias"),
    [
        (1, 64, 4, 2, False),  # the test models' shape: head width 16, 8 pairs
        (3, 768, 12, 4, False),  # the small preset's shape, three rows (batched row kernels, 2 to 4 rows)
        (4, 256, 4, 2, True),  # the tiny preset's shape at batch 4, with biases
        (2, 96, 2, 1, True),  # Qwen2's q/k/v biases; head width 48 (24 pairs, not a multiple of the block)
        (1, 300, 6, 6, False),  # a model width that is not a power of two; no grouping
        (1, 1200, 10, 5, False),  # wider than one loop iteration (the second one half masked)
        # From TILE_MIN_BATCH rows: tensor-core tiles over the whole batch.
        (16, 768, 12, 4, False),  # the small preset at batch 16
        (5, 96, 2, 1, True),  # the fewest rows of a tile; biases; 24 pairs a head, a second block half masked
        (64, 300, 6, 6, False),  # the most rows; a width that is not a power of two (depth blocks masked)
        (65, 32, 2, 1, False),  # more rows than a tile takes: the row kernels again (every fused op)
    ],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_norm_qkv_rope_matches_the_modules(
    batch: int, d_model: int, heads: int, kv_heads: int, bias: bool, dtype: torch.dtype
) -> None:
    torch.manual_seed(0)
    attn = Attention(d_model, heads, kv_heads, 0.0, True, qkv_bias=bias).to(DEVICE, dtype)
    norm = RMSNorm(d_model).to(DEVICE, dtype)
    with torch.no_grad():
        for p in [*attn.parameters(), norm.weight]:
            p.normal_(0.0, 0.5 if p.ndim == 1 else 0.05)  # biases and gain far from their init (0 and 1)
    head_dim, slots, pos = d_model // heads, 40, 29
    cos_table, sin_table = (t.to(DEVICE) for t in rope_tables(head_dim, slots, 10000.0))
    cos, sin = cos_table[pos], sin_table[pos]
    x = 3 * torch.randn(batch, d_model, device=DEVICE, dtype=dtype)  # an RMS far from 1
    want_cache = KVCache(batch + 1, kv_heads, slots, head_dim, dtype, torch.device(DEVICE))
    got_cache = KVCache(batch + 1, kv_heads, slots, head_dim, dtype, torch.device(DEVICE))
    for cache in (want_cache, got_cache):  # junk everywhere, so a write to the wrong slot shows
        cache.k.normal_()
        cache.v.normal_()
    got_cache.k.copy_(want_cache.k)
    got_cache.v.copy_(want_cache.v)
    with torch.no_grad():
        want = _reference(attn, norm, x, cos, sin, pos, want_cache)
        biases = (attn.q_proj.bias, attn.k_proj.bias, attn.v_proj.bias) if bias else None
        weights = (attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight)
        position = torch.tensor([pos], device=DEVICE)
        got = norm_qkv_rope(
            x, norm.weight, norm.eps, weights, biases, cos_table, sin_table, position, got_cache.k, got_cache.v
        )
    assert got.shape == want.shape and got.dtype == dtype
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(got, want, atol=tol, rtol=tol)
    torch.testing.assert_close(got_cache.k, want_cache.k, atol=tol, rtol=tol)
    torch.testing.assert_close(got_cache.v, want_cache.v, atol=tol, rtol=tol)
    # Everything but slot ``pos`` of the first ``batch`` rows is untouched.
    untouched = torch.ones(slots, dtype=torch.bool)
    untouched[pos] = False
    assert torch.equal(got_cache.k[:, :, untouched], want_cache.k[:, :, untouched])
    assert torch.equal(got_cache.k[batch:], want_cache.k[batch:])
