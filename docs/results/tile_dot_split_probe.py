"""Does a batch-16 tile pay for its product's chain of dependent tensor-core steps? The tiny preset's output
projection (x + h W^T, 256 deep, 16 rows, 16 columns a program) with its one product split over the depth
into independent products that are added at the end.

    PYTHONPATH=.:docs/results python3 docs/results/tile_dot_split_probe.py OUT.json

At 16 rows Triton multiplies with Ampere's mma instructions (Hopper's warpgroup ones take 64 rows at least):
one 256-deep product is 16 steps 16 deep, each adding into the same accumulator, so each waits for the one
before. Split into C products of 256 / C each (separate loads, separate accumulators, added at the end), or
one batched product of [C, 16, 256 / C] x [C, 256 / C, 16] summed over C, the chains are C times shorter.
Timed as tile_latency_probe.py times the tile (1 and 65 chained launches in a CUDA graph, with PDL); every
variant's output is checked against torch first.
"""

import json
import sys

import torch
import triton
import triton.language as tl
from tile_latency_probe import BF16, D, _tile_into, per_launch_us

from muomni.models.decode_kernels.pdl import _let_next_kernel_start, _wait_for_inputs

# Without a GPU (TRITON_INTERPRET=1) the script checks the variants' outputs in Triton's interpreter only.
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
PDL = DEVICE == "cuda"


@triton.jit
def _chunk(h_ptr, w_ptr, m, m_ok, n, n_ok, c, stride_hb, dim, KC: tl.constexpr):
    """Weights [KC, BN] and rows [BM, KC] of depth chunk ``c``; the weights are what comes before the wait."""
    k = c * KC + tl.arange(0, KC)
    w = tl.load(w_ptr + n[None, :] * dim + k[:, None], mask=n_ok[None, :], other=0.0)
    return w, h_ptr + m[:, None] * stride_hb + k[None, :]


@triton.jit
def _mm(a, b, UPCAST: tl.constexpr):
    """a b; in Triton's interpreter, which multiplies 16-bit operands wrongly, widened to fp32 first."""
    if UPCAST:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    return tl.dot(a, b)


@triton.jit
def _split_dots(
    h_ptr, w_ptr, x_ptr, out_ptr, stride_hb, stride_xb, stride_ob, batch, rows, dim,
    BM: tl.constexpr, BN: tl.constexpr, CHUNKS: tl.constexpr, PDL: tl.constexpr, UPCAST: tl.constexpr,
):  # fmt: skip
    """x + h W^T over one 256-deep step (dim == 256) as 1, 2 or 4 products, each with its own accumulator."""
    _let_next_kernel_start(PDL)
    KC: tl.constexpr = 256 // CHUNKS
    m = tl.arange(0, BM)
    n = tl.program_id(0) * BN + tl.arange(0, BN)
    m_ok, n_ok = m < batch, n < rows
    tile_ok = m_ok[:, None] & n_ok[None, :]
    w0, h0 = _chunk(h_ptr, w_ptr, m, m_ok, n, n_ok, 0, stride_hb, dim, KC)
    if CHUNKS >= 2:
        w1, h1 = _chunk(h_ptr, w_ptr, m, m_ok, n, n_ok, 1, stride_hb, dim, KC)
    if CHUNKS == 4:
        w2, h2 = _chunk(h_ptr, w_ptr, m, m_ok, n, n_ok, 2, stride_hb, dim, KC)
        w3, h3 = _chunk(h_ptr, w_ptr, m, m_ok, n, n_ok, 3, stride_hb, dim, KC)
    _wait_for_inputs(PDL)
    x = tl.load(x_ptr + m[:, None] * stride_xb + n[None, :], mask=tile_ok, other=0.0).to(tl.float32)
    acc = _mm(tl.load(h0, mask=m_ok[:, None], other=0.0), w0, UPCAST)
    if CHUNKS >= 2:
        acc += _mm(tl.load(h1, mask=m_ok[:, None], other=0.0), w1, UPCAST)
    if CHUNKS == 4:
        acc += _mm(tl.load(h2, mask=m_ok[:, None], other=0.0), w2, UPCAST)
        acc += _mm(tl.load(h3, mask=m_ok[:, None], other=0.0), w3, UPCAST)
    dtype = out_ptr.dtype.element_ty
    tl.store(out_ptr + m[:, None] * stride_ob + n[None, :], (x + acc.to(dtype).to(tl.float32)).to(dtype), mask=tile_ok)


@triton.jit
def _batched_dot(
    h_ptr, w_ptr, x_ptr, out_ptr, stride_hb, stride_xb, stride_ob, batch, rows, dim,
    BM: tl.constexpr, BN: tl.constexpr, CHUNKS: tl.constexpr, PDL: tl.constexpr, UPCAST: tl.constexpr,
):  # fmt: skip
    """The same as one batched product [C, BM, KC] x [C, KC, BN], summed over its C chunks."""
    _let_next_kernel_start(PDL)
    KC: tl.constexpr = 256 // CHUNKS
    m = tl.arange(0, BM)
    n = tl.program_id(0) * BN + tl.arange(0, BN)
    m_ok, n_ok = m < batch, n < rows
    tile_ok = m_ok[:, None] & n_ok[None, :]
    c = tl.arange(0, CHUNKS)[:, None, None]
    kk = tl.arange(0, KC)
    w = tl.load(w_ptr + n[None, None, :] * dim + c * KC + kk[None, :, None], mask=n_ok[None, None, :], other=0.0)
    _wait_for_inputs(PDL)
    x = tl.load(x_ptr + m[:, None] * stride_xb + n[None, :], mask=tile_ok, other=0.0).to(tl.float32)
    h = tl.load(h_ptr + m[None, :, None] * stride_hb + c * KC + kk[None, None, :], mask=m_ok[None, :, None], other=0.0)
    acc = tl.sum(_mm(h, w, UPCAST), axis=0)
    dtype = out_ptr.dtype.element_ty
    tl.store(out_ptr + m[:, None] * stride_ob + n[None, :], (x + acc.to(dtype).to(tl.float32)).to(dtype), mask=tile_ok)


def _launcher(kernel, chunks: int, warps: int):
    def launch(h, w, x, out):
        kernel[(triton.cdiv(D, 16),)](
            h, w, x, out, h.stride(0), x.stride(0), out.stride(0), 16, D, D, BM=16, BN=16, CHUNKS=chunks,
            num_warps=warps, PDL=PDL, UPCAST=not PDL, **({"launch_pdl": True} if PDL else {}),
        )  # fmt: skip

    return launch


def _check(launch) -> float:
    """Largest difference from torch's x + (h W^T rounded to bf16), in units of the output's scale."""
    torch.manual_seed(0)
    h, x = (torch.randn(16, D, device=DEVICE, dtype=BF16) for _ in range(2))
    w = torch.randn(D, D, device=DEVICE, dtype=BF16) * 0.05
    out = torch.empty_like(x)
    launch(h, w, x, out)
    want = (x.float() + (h.float() @ w.float().T).to(BF16).float()).to(BF16)
    return float((out.float() - want.float()).abs().max())


def main(out_path: str) -> None:
    rows, errors = {}, {}
    variants = {}
    for warps in (2, 4):
        for chunks in (1, 2, 4):
            name = f"{chunks} product(s) of {256 // chunks} deep, {warps} warps"
            variants[name] = _launcher(_split_dots, chunks, warps)
        for chunks in (2, 4, 8):
            variants[f"batched product of {chunks} x {256 // chunks} deep, summed, {warps} warps"] = _launcher(
                _batched_dot, chunks, warps
            )
    if PDL:
        rows["the shipped tile kernel (one product), as the decode step launches it"] = per_launch_us(_tile_into, 16)
    for name, launch in variants.items():
        try:
            errors[name] = _check(launch)
            rows[name] = per_launch_us(launch, 16) if PDL else None
        except Exception as error:  # a variant Triton does not compile is reported, not fatal
            rows[name] = None
            errors[name] = f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
        us = rows[name] if rows[name] is None else round(rows[name], 3)
        print(f"{us} us  {name}  (max |diff| {errors[name]})", flush=True)
    gpu = torch.cuda.get_device_name() if PDL else "none (interpreter)"
    info = {"gpu": gpu, "torch": torch.__version__, "triton": triton.__version__}
    with open(out_path, "w") as f:
        json.dump({**info, "us_per_launch": rows, "max_abs_diff_vs_torch": errors}, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1])
