"""The SwiGLU-epilogue product of gemm_swiglu_probe.py, with Hopper's tensor memory accelerator (TMA).

The plain Triton kernel of gemm_swiglu_probe.py ran its products at 63% of cuBLAS's rate on an H200. This
probe asks whether TMA loads and stores (descriptors made on the host), and a persistent grid (one program
per SM walking the tiles, so one tile's epilogue overlaps the next tile's first loads), close that gap at the
small preset's MLP input shape (x [16,384, 768] bf16, gate and up weights [2,048, 768]).

Two layouts of the weights:
- ``two``: a gate tile and an up tile per program, two products into two accumulators;
- ``joined``: gate and up rows interleaved in blocks of BN/2 (one [4,096, 768] weight), one product per
  program whose accumulator's halves are the gate and the up columns of the same BN/2 features.

Prints each configuration's time and TFLOP/s (the two products' FLOPs) and checks g, u and h against cuBLAS
plus the SwiGLU. On a CPU (Triton's interpreter) it runs a small shape, correctness only.
"""

import json
import os

import torch
import triton
import triton.language as tl
from gemm_swiglu_probe import reference, swiglu, timed
from triton.tools.tensor_descriptor import TensorDescriptor

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
M, N, K = (16384, 2048, 768) if CUDA else (256, 128, 64)


@triton.jit
def _tile_of(tile, tiles_m, tiles_n, GROUP: tl.constexpr):
    # Grouped order: tiles that run together share rows of x in L2.
    per_group = GROUP * tiles_n
    first_m = (tile // per_group) * GROUP
    rows_in_group = tl.minimum(tiles_m - first_m, GROUP)
    return first_m + (tile % per_group) % rows_in_group, (tile % per_group) // rows_in_group


@triton.jit
def _swiglu(g, u, dtype: tl.constexpr):
    g16, u16 = g.to(dtype), u.to(dtype)
    gf = g16.to(tl.float32)
    return g16, u16, ((gf / (1.0 + tl.exp(-gf))).to(dtype).to(tl.float32) * u16.to(tl.float32)).to(dtype)


@triton.jit
def _tma_two(
    x_desc, wg_desc, wu_desc, g_desc, u_desc, h_desc, M, N, K,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, GROUP: tl.constexpr, PROGRAMS: tl.constexpr,
    WS: tl.constexpr,
):  # fmt: skip
    tiles_m, tiles_n = tl.cdiv(M, BM), tl.cdiv(N, BN)
    dtype = h_desc.dtype
    for tile in tl.range(tl.program_id(0), tiles_m * tiles_n, PROGRAMS, flatten=True, warp_specialize=WS):
        tile_m, tile_n = _tile_of(tile, tiles_m, tiles_n, GROUP)
        m, n = tile_m * BM, tile_n * BN
        g = tl.zeros([BM, BN], tl.float32)
        u = tl.zeros([BM, BN], tl.float32)
        for k in range(0, K, BK):
            x = x_desc.load([m, k])
            g = tl.dot(x, wg_desc.load([n, k]).T, g)
            u = tl.dot(x, wu_desc.load([n, k]).T, u)
        g16, u16, h = _swiglu(g, u, dtype)
        g_desc.store([m, n], g16)
        u_desc.store([m, n], u16)
        h_desc.store([m, n], h)


@triton.jit
def _tma_joined(
    x_desc, w_desc, g_desc, u_desc, h_desc, M, N, K,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, GROUP: tl.constexpr, PROGRAMS: tl.constexpr,
    WS: tl.constexpr,
):  # fmt: skip
    # w holds blocks of BN/2 gate rows then the same features' BN/2 up rows: one [BM, BN] product per tile.
    half: tl.constexpr = BN // 2
    tiles_m, tiles_n = tl.cdiv(M, BM), tl.cdiv(2 * N, BN)
    dtype = h_desc.dtype
    for tile in tl.range(tl.program_id(0), tiles_m * tiles_n, PROGRAMS, flatten=True, warp_specialize=WS):
        tile_m, tile_n = _tile_of(tile, tiles_m, tiles_n, GROUP)
        m = tile_m * BM
        acc = tl.zeros([BM, BN], tl.float32)
        for k in range(0, K, BK):
            acc = tl.dot(x_desc.load([m, k]), w_desc.load([tile_n * BN, k]).T, acc)
        g, u = tl.split(tl.permute(tl.reshape(acc, [BM, 2, half]), [0, 2, 1]))
        g16, u16, h = _swiglu(g, u, dtype)
        g_desc.store([m, tile_n * half], g16)
        u_desc.store([m, tile_n * half], u16)
        h_desc.store([m, tile_n * half], h)


def joined_weights(wg, wu, bn):
    half = bn // 2
    return torch.stack([wg.view(-1, half, K), wu.view(-1, half, K)], dim=1).reshape(2 * N, K).contiguous()


def fused(x, weights, config, programs):
    layout, bm, bn, bk, group, warps, stages, persistent, ws = config
    g = torch.empty(M, N, device=DEVICE, dtype=x.dtype)
    u, h = torch.empty_like(g), torch.empty_like(g)
    out_block = [bm, bn // 2 if layout == "joined" else bn]
    outs = [TensorDescriptor.from_tensor(t, out_block) for t in (g, u, h)]
    x_desc = TensorDescriptor.from_tensor(x, [bm, bk])
    tiles = triton.cdiv(M, bm) * triton.cdiv(N * (2 if layout == "joined" else 1), bn)
    grid = min(programs, tiles) if persistent else tiles
    shape = {"BM": bm, "BN": bn, "BK": bk, "GROUP": group, "PROGRAMS": grid, "WS": ws, "num_warps": warps,
             "num_stages": stages}  # fmt: skip
    if layout == "joined":
        w_desc = TensorDescriptor.from_tensor(weights[bn], [bn, bk])
        _tma_joined[(grid,)](x_desc, w_desc, *outs, M, N, K, **shape)
    else:
        wg_desc, wu_desc = (TensorDescriptor.from_tensor(w, [bn, bk]) for w in weights["two"])
        _tma_two[(grid,)](x_desc, wg_desc, wu_desc, *outs, M, N, K, **shape)
    return g, u, h


def main():
    torch.manual_seed(0)
    dtype = torch.bfloat16 if CUDA else torch.float32
    x = torch.randn(M, K, device=DEVICE, dtype=dtype)
    wg, wu = (0.05 * torch.randn(N, K, device=DEVICE, dtype=dtype) for _ in range(2))
    act = torch.compile(swiglu) if CUDA else swiglu
    want = reference(x, wg, wu, act)
    programs = torch.cuda.get_device_properties(0).multi_processor_count if CUDA else 4
    # (layout, BM, BN, BK, GROUP, warps, stages, persistent, warp specialization)
    configs = [("two", 128, 128, 64, 8, 8, 3, False, False), ("two", 128, 128, 64, 8, 8, 4, False, False),
               ("two", 128, 128, 64, 8, 8, 3, True, False), ("two", 128, 128, 64, 8, 8, 4, True, False),
               ("two", 128, 64, 64, 8, 4, 4, True, False), ("two", 128, 128, 64, 8, 8, 3, True, True),
               ("joined", 128, 256, 64, 8, 8, 3, False, False), ("joined", 128, 256, 64, 8, 8, 3, True, False),
               ("joined", 128, 256, 64, 8, 8, 4, True, False), ("joined", 128, 128, 64, 8, 4, 4, True, False),
               ("joined", 128, 256, 64, 8, 8, 3, True, True),
               ("joined", 128, 128, 64, 8, 4, 4, True, True)]  # fmt: skip
    if not CUDA:
        configs = [("two", 64, 32, 32, 2, 4, 1, True, False), ("joined", 64, 64, 32, 2, 4, 1, True, False),
                   ("two", 64, 32, 32, 2, 4, 1, False, False)]  # fmt: skip
    out = {"shape": [M, N, K], "device": torch.cuda.get_device_name() if CUDA else "cpu", "torch": torch.__version__,
           "triton": triton.__version__, "programs": programs, "rows": []}  # fmt: skip
    weights = {"two": (wg, wu)}
    for bn in {c[2] for c in configs if c[0] == "joined"}:
        weights[bn] = joined_weights(wg, wu, bn)
    flops = 2 * 2 * M * N * K
    for config in configs:
        row = {"config": config}
        try:
            got = fused(x, weights, config, programs)
            row["max_rel_err"] = max(
                ((a.float() - b.float()).norm() / b.float().norm()).item() for a, b in zip(got, want, strict=True)
            )
            if CUDA:
                row["us"] = timed(lambda config=config: fused(x, weights, config, programs))
                row["tflops"] = flops / row["us"] / 1e6
        except Exception as e:  # noqa: BLE001 - a configuration this GPU or Triton cannot run
            row["error"] = f"{type(e).__name__}: {str(e)[:200]}"
        out["rows"].append(row)
        print(json.dumps(row), flush=True)
    if CUDA:
        out["cublas_two_products_us"] = timed(lambda: (x @ wg.t(), x @ wu.t()))
        out["cublas_two_products_and_swiglu_us"] = timed(lambda: reference(x, wg, wu, act))
        out["cublas_two_products_tflops"] = flops / out["cublas_two_products_us"] / 1e6
    print(json.dumps({k: v for k, v in out.items() if k != "rows"}))
    with open(os.path.join(os.environ.get("OUT", "/tmp"), "gemm_swiglu_tma_probe.json"), "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
