"""The split-KV attention sweep of BENCHMARKS.md (docs/results/h200_attention_dot.json).

    PYTHONPATH=. python3 docs/results/attention_dot_sweep.py OUT.json

Both kernels alone, bf16, over 12 layers' caches replayed in a CUDA graph (so one layer's cache does not
stay in L2), for the small preset at batch 1, 16 and 64 and the tiny one at batch 1 and 16, at three
positions, with ``last`` as a decode step passes it: the time per call, the time without the merge kernel
(replaced by nothing), and the largest error against math attention. On the tensor-core kernels, every
block length x warps (the same block for every row count); on a checkout of the kernels before them
(b329b18), their one configuration. The figures came from this procedure in an untidier script, on the
kernels of 3fb03fc with one block length for every row count, as here.
"""

import json
import sys

import torch
from triton.testing import do_bench_cudagraph

from muomni.models.layers import math_attention

try:  # split-KV attention's launch and settings
    from muomni.models import split_kv as da
except ImportError:  # a checkout from before they left muomni.models.triton_decode
    from muomni.models import triton_decode as da

TENSOR_CORES = hasattr(da, "ATTENTION_WARPS")
CONFIGS = [(b, w) for b in (16, 32, 64) for w in (1, 2, 4)] if TENSOR_CORES else [(da.BLOCK, None)]
SHAPES = {"small": (12, 4, 1024, [1, 16, 64], [40, 272, 520]), "tiny": (4, 2, 512, [1, 16], [40, 272, 500])}
LAYERS = 12


class NoMerge:
    """Stands in for the merge kernel: its launch does nothing."""

    def __getitem__(self, grid: tuple) -> object:
        return lambda *args, **kwargs: None


def time_per_call(q: torch.Tensor, caches: list, valid: torch.Tensor, last: torch.Tensor) -> float:
    """Microseconds per call, median of a CUDA graph of one call per layer."""

    def run() -> None:
        for k, v in caches:
            da.split_kv_attention(q, k, v, valid, last)

    return do_bench_cudagraph(run, rep=100, return_mode="median") * 1e3 / LAYERS


def sweep(heads: int, kv_heads: int, slots: int, batch: int, pos: int) -> dict:
    torch.manual_seed(0)
    q = torch.randn(batch, heads, 1, 64, device="cuda", dtype=torch.bfloat16)
    caches = [
        tuple(torch.randn(batch, kv_heads, slots, 64, device="cuda", dtype=torch.bfloat16) for _ in "kv")
        for _ in range(LAYERS)
    ]
    valid = torch.zeros(batch, slots, dtype=torch.bool, device="cuda")
    valid[:, : pos + 1] = True
    last = torch.tensor([pos], device="cuda")
    k0, v0 = caches[0]
    want = math_attention(q.float(), k0.float(), v0.float(), valid[:, None, None, :], 0.0)
    merge, row = da._merge_splits, {}
    for block, warps in CONFIGS:
        da.BLOCK = block
        if TENSOR_CORES:
            da.WIDE_BLOCK, da.ATTENTION_WARPS = block, warps
        err = (da.split_kv_attention(q, k0, v0, valid, last).float() - want).abs().max().item()
        us = time_per_call(q, caches, valid, last)
        da._merge_splits = NoMerge()
        partial_us = time_per_call(q, caches, valid, last)
        da._merge_splits = merge
        row[f"{block}x{warps}"] = {"us": round(us, 2), "partial_us": round(partial_us, 2), "max_err": err}
    return row


def main(out_path: str) -> None:
    results = {}
    for name, (heads, kv_heads, slots, batches, positions) in SHAPES.items():
        for batch in batches:
            for pos in positions:
                row = results[f"{name}_b{batch}_pos{pos}"] = sweep(heads, kv_heads, slots, batch, pos)
                print(name, batch, pos, {c: (r["us"], r["partial_us"]) for c, r in row.items()}, flush=True)
    with open(out_path, "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1])
