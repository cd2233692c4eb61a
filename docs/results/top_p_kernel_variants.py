"""Why the first bisection top-p kernel (4d3d6b1) was slow: variants of it alone, on a GPU.

Each variant is the kernel with its warps and the dtype of its sums changed; for each, Triton's count of
registers and spilled bytes, the microseconds a choice (a CUDA graph of 20 launches, replayed), and whether
its tokens equal the sorting rule's on the same rows. Rows: [B, 32000] scaled logits, top-p 0.9.

    PYTHONPATH=. python3 docs/results/top_p_kernel_variants.py OUT.json [--quick]
"""

from __future__ import annotations

import json
import sys
import time

import torch
import triton
import triton.language as tl

from muomni.inference.sampling import _top_p, draw_noise

# --quick: fp32 sums and 16 or 32 warps only, and batch 64 as well (the second run)
QUICK = "--quick" in sys.argv
BATCHES = (1, 16, 64) if QUICK else (1, 16)
DTYPES = (False,) if QUICK else (True, False)
WARPS = (16, 32) if QUICK else (4, 8, 16, 32)


@triton.jit
def _variant_kernel(
    x_ptr,
    noise_ptr,
    out_ptr,
    n_cols,
    x_row_stride,
    noise_row_stride,
    drop_fraction,
    BLOCK: tl.constexpr,
    BISECT: tl.constexpr,
    F64: tl.constexpr,
):
    """4d3d6b1's kernel (muomni/inference/triton_top_p.py there), its sums in float64 (as it ran, with 32
    warps) or in float32."""
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    inside = cols < n_cols
    x = tl.load(x_ptr + row * x_row_stride + cols, mask=inside, other=-float("inf")).to(tl.float32)
    e = tl.exp(x - tl.max(x, axis=0))
    bits = e.to(tl.int32, bitcast=True)
    if F64:
        budget = drop_fraction * tl.sum(e.to(tl.float64), axis=0)
    else:
        budget = drop_fraction * tl.sum(e, axis=0)
    lo = tl.full((), 0, tl.int32)
    hi = tl.full((), 0x3F800000, tl.int32)
    for _ in range(BISECT):
        mid = (lo + hi) // 2
        if F64:
            held = tl.sum(tl.where(bits <= mid, e, 0.0).to(tl.float64), axis=0)
        else:
            held = tl.sum(tl.where(bits <= mid, e, 0.0), axis=0)
        above = held > budget
        hi = tl.where(above, mid, hi)
        lo = tl.where(above, lo, mid + 1)
    boundary = hi
    if F64:
        value = boundary.to(tl.float32, bitcast=True).to(tl.float64)
        below = tl.sum(tl.where(bits < boundary, e, 0.0).to(tl.float64), axis=0)
    else:
        value = boundary.to(tl.float32, bitcast=True)
        below = tl.sum(tl.where(bits < boundary, e, 0.0), axis=0)
    ties = (bits == boundary) & inside
    ties_from_here = tl.sum(ties.to(tl.int32), axis=0) - tl.cumsum(ties.to(tl.int32), axis=0) + 1
    keep = (bits > boundary) | (ties & (below + ties_from_here.to(value.dtype) * value > budget))
    keep = keep | (cols == tl.argmax(e, axis=0, tie_break_left=True))
    noise = tl.load(noise_ptr + row * noise_row_stride + cols, mask=inside, other=1.0)
    score = tl.where(keep & inside, x - tl.log(noise), -float("inf"))
    tl.store(out_ptr + row, tl.argmax(score, axis=0, tie_break_left=True).to(tl.int64))


def launch(x: torch.Tensor, noise: torch.Tensor, p: float, warps: int, f64: bool, bisect: int = 30):
    out = torch.empty(x.shape[0], dtype=torch.int64, device=x.device)
    block = triton.next_power_of_2(x.shape[1])
    compiled = _variant_kernel[(x.shape[0],)](
        x,
        noise,
        out,
        x.shape[1],
        x.stride(0),
        noise.stride(0),
        1.0 - p,
        BLOCK=block,
        BISECT=bisect,
        F64=f64,
        num_warps=warps,
    )
    return out, compiled


def timed(fn, calls: int = 20, rounds: int = 5) -> float:
    fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            fn()
    best = float("inf")
    for _ in range(rounds):
        torch.cuda.synchronize()
        start = time.perf_counter()
        graph.replay()
        torch.cuda.synchronize()
        best = min(best, (time.perf_counter() - start) / calls)
    return 1e6 * best


def main() -> None:
    device = torch.device("cuda")
    gen = torch.Generator(device).manual_seed(0)
    report = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "rows": [],
    }
    for batch in BATCHES:
        x = torch.randn(batch, 32000, device=device, generator=gen) * 3
        x = x - x.amax(-1, keepdim=True)
        noise = draw_noise((batch, 32000), device, gen)
        want = (_top_p(x, 0.9) - noise.log()).argmax(-1)
        for f64 in DTYPES:
            for warps in WARPS:
                for bisect in (30, 1):
                    got, compiled = launch(x, noise, 0.9, warps, f64, bisect)
                    args = (x, noise, 0.9, warps, f64, bisect)
                    row = {
                        "batch": batch,
                        "f64": f64,
                        "warps": warps,
                        "bisections": bisect,
                        "regs": compiled.n_regs,
                        "spills": compiled.n_spills,
                        "us": timed(lambda args=args: launch(*args)),
                        "equals_sort": bool(torch.equal(got, want)) if bisect == 30 else None,
                    }
                    print(json.dumps(row), flush=True)
                    report["rows"].append(row)
        # The package's kernel (fp32 sums, the equal tokens' count only where there are several, x loaded
        # again for the race, no argmax guard: p is kept at 1e-6 or more instead), with its own warps.
        from muomni.inference.triton_top_p import top_p_race

        got = top_p_race(x, noise, 0.9)
        row = {
            "batch": batch,
            "kernel": "muomni.inference.triton_top_p",
            "us": timed(lambda x=x, noise=noise: top_p_race(x, noise, 0.9)),
            "equals_sort": bool(torch.equal(got, want)),
        }
        print(json.dumps(row), flush=True)
        report["rows"].append(row)
    with open(sys.argv[1], "w") as f:
        json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
