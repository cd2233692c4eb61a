"""The split-KV kernel sweep of BENCHMARKS.md: slots per step x warps, timed alone, checked against math.

    PYTHONPATH=. python3 docs/results/split_kv_sweep.py OUT.json

For the attention shapes of batch 1 of the small and tiny presets and batch 16 of the small one (bf16,
half the cache valid), each configuration is checked against math attention, then 100 calls of both
kernels are captured in one CUDA graph and replayed five times; the median time per call is kept. The
warps are set through ``ELEMENTS_PER_WARP``, from which the code derives them. (The figures in
BENCHMARKS.md came from this procedure on the kernels of commit 0d3604f, whose warps were then a constant
set directly.) It runs on the kernels before the tensor-core ones of 3fb03fc, which have no
``ELEMENTS_PER_WARP``; their sweep is attention_dot_sweep.py.
"""

import json
import sys

import torch

from muomni.models.layers import math_attention

try:  # split-KV attention's launch and settings
    from muomni.models import split_kv as da
except ImportError:  # a checkout from before they left muomni.models.triton_decode
    from muomni.models import triton_decode as da

SHAPES = {"small": (1, 12, 3, 1024, 64), "tiny": (1, 4, 2, 512, 64), "small_b16": (16, 12, 3, 1024, 64)}


def time_per_call(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, valid: torch.Tensor) -> float:
    """Microseconds per call of both kernels, from a CUDA graph of 100 calls (launch gaps included)."""
    for _ in range(3):
        da.split_kv_attention(q, k, v, valid)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(100):
            da.split_kv_attention(q, k, v, valid)
    graph.replay()
    times = []
    for _ in range(5):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / 100)
    return sorted(times)[2]


def main(out_path: str) -> None:
    results: dict = {}
    warps_by_size = da.ELEMENTS_PER_WARP
    for name, (batch, heads, kv_heads, slots, head_dim) in SHAPES.items():
        torch.manual_seed(0)
        q = torch.randn(batch, heads, 1, head_dim, device="cuda", dtype=torch.bfloat16)
        k, v = (torch.randn(batch, kv_heads, slots, head_dim, device="cuda", dtype=torch.bfloat16) for _ in "kv")
        valid = torch.ones(batch, slots, dtype=torch.bool, device="cuda")
        valid[:, slots // 2 :] = False
        want = math_attention(q.float(), k.float(), v.float(), valid[:, None, None, :], 0.0)
        results[name] = {}
        for block in (16, 32, 64):
            for warps in (1, 2, 4, 8):
                # One warp per (query heads x block x head width) / ELEMENTS_PER_WARP products: set it so the
                # code launches `warps` warps for this shape.
                group_pad = 1 << (heads // kv_heads - 1).bit_length()
                da.BLOCK = block
                da.ELEMENTS_PER_WARP = group_pad * block * head_dim // warps
                got = da.split_kv_attention(q, k, v, valid)
                ok = bool(torch.allclose(got.float(), want, atol=2e-2, rtol=2e-2))
                results[name][f"{block}x{warps}"] = {"us": time_per_call(q, k, v, valid), "matches_math": ok}
                print(name, block, warps, results[name][f"{block}x{warps}"], flush=True)
    da.ELEMENTS_PER_WARP = warps_by_size
    with open(out_path, "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1])
