"""Can a Triton matrix product with the SwiGLU epilogue beat cuBLAS plus Inductor's SwiGLU kernel?

The small preset's MLP input product per training step (x [16,384, 768] bf16, gate and up weights [2,048,
768]): cuBLAS products then Inductor's fused silu(g) * u, against one Triton kernel computing a gate tile and
an up tile per program and storing g, u (the backward needs them) and h = silu(g) * u. Prints the time of
each and its TFLOP/s counted as the two products; checks the Triton outputs against the cuBLAS ones.
On a CPU (Triton's interpreter) it runs a small shape, correctness only.
"""

import json
import os
import statistics

import torch
import triton
import triton.language as tl

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
M, N, K = (16384, 2048, 768) if CUDA else (64, 64, 32)


@triton.jit
def _gate_up_swiglu(
    x_ptr, wg_ptr, wu_ptr, g_ptr, u_ptr, h_ptr, M, N, K,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, GROUP: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    tiles_m, tiles_n = tl.cdiv(M, BM), tl.cdiv(N, BN)
    # Grouped order: programs that run together share rows of x in L2.
    per_group = GROUP * tiles_n
    group = pid // per_group
    first_m = group * GROUP
    rows_in_group = tl.minimum(tiles_m - first_m, GROUP)
    tile_m = first_m + (pid % per_group) % rows_in_group
    tile_n = (pid % per_group) // rows_in_group
    m = tile_m * BM + tl.arange(0, BM)
    n = tile_n * BN + tl.arange(0, BN)
    k = tl.arange(0, BK)
    g = tl.zeros([BM, BN], tl.float32)
    u = tl.zeros([BM, BN], tl.float32)
    for start in range(0, K, BK):
        x = tl.load(x_ptr + m[:, None] * K + (start + k)[None, :], mask=m[:, None] < M, other=0.0)
        wg = tl.load(wg_ptr + n[None, :] * K + (start + k)[:, None], mask=n[None, :] < N, other=0.0)
        wu = tl.load(wu_ptr + n[None, :] * K + (start + k)[:, None], mask=n[None, :] < N, other=0.0)
        g = tl.dot(x, wg, g)
        u = tl.dot(x, wu, u)
    ok = (m[:, None] < M) & (n[None, :] < N)
    at = m[:, None] * N + n[None, :]
    dtype = h_ptr.dtype.element_ty
    g16, u16 = g.to(dtype), u.to(dtype)
    tl.store(g_ptr + at, g16, mask=ok)
    tl.store(u_ptr + at, u16, mask=ok)
    gf = g16.to(tl.float32)
    h = (gf / (1.0 + tl.exp(-gf))).to(dtype).to(tl.float32) * u16.to(tl.float32)
    tl.store(h_ptr + at, h.to(dtype), mask=ok)


def fused(x, wg, wu, config):
    g = torch.empty(M, N, device=DEVICE, dtype=x.dtype)
    u, h = torch.empty_like(g), torch.empty_like(g)
    bm, bn, bk, group, warps, stages = config
    grid = (triton.cdiv(M, bm) * triton.cdiv(N, bn),)
    _gate_up_swiglu[grid](x, wg, wu, g, u, h, M, N, K, BM=bm, BN=bn, BK=bk, GROUP=group, num_warps=warps,
                          num_stages=stages)  # fmt: skip
    return g, u, h


def swiglu(g, u):
    return torch.nn.functional.silu(g) * u


def reference(x, wg, wu, act):
    g, u = x @ wg.t(), x @ wu.t()
    return g, u, act(g, u)


def timed(fn, reps=30):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1000)
    return statistics.median(times)


def main():
    torch.manual_seed(0)
    dtype = torch.bfloat16 if CUDA else torch.float32
    x = torch.randn(M, K, device=DEVICE, dtype=dtype)
    wg, wu = (0.05 * torch.randn(N, K, device=DEVICE, dtype=dtype) for _ in range(2))
    act = torch.compile(swiglu) if CUDA else swiglu
    want = reference(x, wg, wu, act)
    configs = [(128, 128, 64, 8, 8, 3), (128, 128, 64, 8, 8, 4), (128, 64, 64, 8, 4, 4), (64, 128, 64, 8, 4, 4),
               (128, 256, 64, 8, 8, 3), (256, 128, 64, 8, 8, 3)]  # fmt: skip
    if not CUDA:
        configs = [(32, 32, 16, 2, 4, 1)]
    out = {"shape": [M, N, K], "device": torch.cuda.get_device_name() if CUDA else "cpu", "torch": torch.__version__,
           "triton": triton.__version__, "rows": []}  # fmt: skip
    flops = 2 * 2 * M * N * K
    for config in configs:
        try:
            got = fused(x, wg, wu, config)
        except Exception as e:  # noqa: BLE001 - a configuration the GPU cannot run (shared memory)
            out["rows"].append({"config": config, "error": type(e).__name__})
            continue
        err = max(((a.float() - b.float()).norm() / b.float().norm()).item() for a, b in zip(got, want, strict=True))
        row = {"config": config, "max_rel_err": err}
        if CUDA:
            row["us"] = timed(lambda config=config: fused(x, wg, wu, config))
            row["tflops"] = flops / row["us"] / 1e6
        out["rows"].append(row)
        print(json.dumps(row), flush=True)
    if CUDA:
        wcat = torch.cat([wg, wu])
        out["cublas_two_products_us"] = timed(lambda: (x @ wg.t(), x @ wu.t()))
        out["cublas_two_products_and_swiglu_us"] = timed(lambda: reference(x, wg, wu, act))
        out["cublas_one_joined_product_us"] = timed(lambda: x @ wcat.t())
        out["swiglu_alone_us"] = timed(lambda: act(want[0], want[1]))
        for key in ("cublas_two_products_us", "cublas_one_joined_product_us"):
            out[key.replace("_us", "_tflops")] = flops / out[key] / 1e6
    print(json.dumps({k: v for k, v in out.items() if k != "rows"}))
    with open(os.path.join(os.environ.get("OUT", "/tmp"), "gemm_swiglu_probe.json"), "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
