"""Where a batch-16 gate/up tile's time goes: the tiny preset's norm, gate and up products and SwiGLU
(256 deep, 1,024 wide, 64 programs of 16 columns, one step each, PDL) as the decode step launches it,
against variants of it that leave one stage out.

    PYTHONPATH=. python3 docs/results/gate_up_latency_probe.py OUT.json

Timed as tile_latency_probe.py times the output projection: 1 and 65 launches chained in a CUDA graph,
per launch = (time of 65 - time of 1) / 64. The output projection's tile took 1.28 us a launch there, and
a gate/up tile, from the increments of a whole step, about 2.8 before ONE_STEP_TILES.
"""

import json
import sys

import torch
import triton
import triton.language as tl
from tile_latency_probe import _graph_us

from muomni.models import triton_decode as td
from muomni.models.decode_kernels.pdl import _let_next_kernel_start, _wait_for_inputs
from muomni.models.decode_kernels.tiles import _batch_rows, _dot, _weights_t

D, F, LAYERS, BATCH = 256, 1024, 4, 16
BF16 = torch.bfloat16


@triton.jit
def _variant(
    x_ptr, norm_ptr, wg_ptr, wu_ptr, h_ptr, stride_xb, stride_hb, batch, rows, dim, eps,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
    NORM: tl.constexpr, TWO: tl.constexpr, SILU: tl.constexpr, GAIN_EARLY: tl.constexpr, SQUARES_DOT: tl.constexpr,
):  # fmt: skip
    """_tile_norm_gate_up with ONE_STEP, with stages switched off or moved."""
    _let_next_kernel_start(True)
    m = tl.arange(0, BM)
    n = tl.program_id(0) * BN + tl.arange(0, BN)
    m_ok, n_ok = m < batch, n < rows
    k = tl.arange(0, BK)
    k_ok = k < dim
    w_a = _weights_t(wg_ptr, n, n_ok, k, k_ok, dim)
    if TWO:
        w_b = _weights_t(wu_ptr, n, n_ok, k, k_ok, dim)
    if GAIN_EARLY:
        gain = tl.load(norm_ptr + k, mask=k_ok, other=0.0).to(tl.float32)
    _wait_for_inputs(True)
    if not GAIN_EARLY:
        gain = tl.load(norm_ptr + k, mask=k_ok, other=0.0).to(tl.float32)
    x = _batch_rows(x_ptr, m, m_ok, k, k_ok, stride_xb).to(tl.float32)
    if NORM:
        gx = x * gain[None, :]
    else:
        gx = x
    gate = _dot(gx, w_a, tl.zeros([BM, BN], tl.float32), "tf32", False)
    if TWO:
        up = _dot(gx, w_b, tl.zeros([BM, BN], tl.float32), "tf32", False)
    else:
        up = gate
    if NORM:
        if SQUARES_DOT:  # the statistic on the tensor cores, in the products' layout: (x * x) ones
            ones = tl.full([BK, BN], 1.0, tl.float32).to(tl.bfloat16)
            squares = _dot(x * x, ones, tl.zeros([BM, BN], tl.float32), "tf32", False)
            inv_rms = 1.0 / tl.sqrt(squares / dim + eps)
        else:
            inv_rms = (1.0 / tl.sqrt(tl.sum(x * x, axis=1) / dim + eps))[:, None]
        gate, up = gate * inv_rms, up * inv_rms
    dtype = h_ptr.dtype.element_ty
    gate, up = gate.to(dtype).to(tl.float32), up.to(dtype).to(tl.float32)
    if SILU:
        gate = (gate / (1.0 + tl.exp(-gate))).to(dtype).to(tl.float32)
    tl.store(h_ptr + m[:, None] * stride_hb + n[None, :], (gate * up).to(dtype), mask=m_ok[:, None] & n_ok[None, :])


def per_launch_us(launch) -> float:
    wg = [torch.randn(F, D, device="cuda", dtype=BF16) * 0.02 for _ in range(LAYERS)]
    wu = [torch.randn(F, D, device="cuda", dtype=BF16) * 0.02 for _ in range(LAYERS)]
    gain = torch.rand(D, device="cuda", dtype=BF16) + 0.5
    xs = [torch.randn(BATCH, D, device="cuda", dtype=BF16) for _ in range(65)]
    h = torch.empty(BATCH, F, device="cuda", dtype=BF16)

    def chain(count: int):
        def run():
            for i in range(count):
                launch(xs[i], gain, wg[i % LAYERS], wu[i % LAYERS], h)

        return run

    return (_graph_us(chain(65)) - _graph_us(chain(1))) / 64


def _real(x, gain, wg, wu, h):
    tile = td._gate_up_shape(BATCH, wg.dtype, D)
    td._tile_norm_gate_up[(triton.cdiv(F, tile["BN"]), 1)](
        x, gain, wg, wu, h, x, x, x.stride(0), h.stride(0), BATCH, F, D, 1e-5, SPLITS=1, **tile,
        **td._tile_launch(x.device, BATCH, tile, D, 1),
    )  # fmt: skip


def main(out_path: str) -> None:
    rows = {"gate/up tile as the decode step launches it": per_launch_us(_real)}
    full = dict(NORM=True, TWO=True, SILU=True, GAIN_EARLY=False, SQUARES_DOT=False)
    variants = {
        "copy of it": {},
        "gain before the wait": {"GAIN_EARLY": True},
        "statistic as a product (x*x) ones": {"SQUARES_DOT": True},
        "no norm (no gain, no statistic)": {"NORM": False},
        "one product (gate only)": {"TWO": False},
        "no silu": {"SILU": False},
        "no norm, one product, no silu": {"NORM": False, "TWO": False, "SILU": False},
    }
    for name, change in variants.items():
        flags = {**full, **change}

        def launch(x, gain, wg, wu, h, flags=flags):
            _variant[(F // 16,)](
                x, gain, wg, wu, h, x.stride(0), h.stride(0), BATCH, F, D, 1e-5, BM=16, BN=16, BK=D,
                num_warps=2, launch_pdl=True, **flags,
            )  # fmt: skip

        rows[name] = per_launch_us(launch)
    for name, us in rows.items():
        print(f"{us:6.2f} us  {name}", flush=True)
    info = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__}
    with open(out_path, "w") as f:
        json.dump({**info, "us_per_launch": rows}, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1])
