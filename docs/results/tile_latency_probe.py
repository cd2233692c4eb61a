"""Where a batch-16 tile kernel's time goes: the tiny preset's output projection (x + h W^T, 256 x 256) as
the decode step runs it, against the batch-1 row kernel and against variants that leave one stage out.

    PYTHONPATH=. python3 docs/results/tile_latency_probe.py OUT.json

Each variant runs 1 and 65 times back to back in a CUDA graph, with PDL as the decode step launches it,
each launch's output the next one's residual input (the dependency a decode step has), four layers'
weights in turn; per launch = (time of 65 - time of 1) / 64. grid_barrier_probe.py measured what a
boundary between two trivial kernels costs there (0.64-0.72 us with PDL): the rest is the kernel's own
path after its wait.
"""

import json
import sys

import torch
import triton
import triton.language as tl

from muomni.models import triton_decode as td
from muomni.models.decode_kernels.pdl import _let_next_kernel_start, _wait_for_inputs
from muomni.models.decode_kernels.rows import _down_residual
from muomni.models.decode_kernels.tiles import _batch_rows, _dot, _weights_t

D, LAYERS = 256, 4
BF16 = torch.bfloat16


@triton.jit
def _variant(
    h_ptr, w_ptr, x_ptr, out_ptr, stride_hb, stride_xb, stride_ob, batch, rows, dim,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
    DOT: tl.constexpr, LOAD_H: tl.constexpr, LOAD_X: tl.constexpr, EARLY: tl.constexpr,
):  # fmt: skip
    """_tile_linear_residual unsplit (one BK step: dim == BK), with stages switched off."""
    _let_next_kernel_start(True)
    m = tl.arange(0, BM)
    n = tl.program_id(0) * BN + tl.arange(0, BN)
    m_ok, n_ok = m < batch, n < rows
    tile_ok = m_ok[:, None] & n_ok[None, :]
    k = tl.arange(0, BK)
    k_ok = k < dim
    if EARLY:
        w = _weights_t(w_ptr, n, n_ok, k, k_ok, dim)
    _wait_for_inputs(True)
    if not EARLY:
        w = _weights_t(w_ptr, n, n_ok, k, k_ok, dim)
    x = tl.zeros([BM, BN], tl.float32)
    if LOAD_X:
        x = tl.load(x_ptr + m[:, None] * stride_xb + n[None, :], mask=tile_ok, other=0.0).to(tl.float32)
    if LOAD_H:
        h = _batch_rows(h_ptr, m, m_ok, k, k_ok, stride_hb)
    else:
        h = tl.zeros([BM, BK], tl.float32) + 0.5
    acc = tl.zeros([BM, BN], tl.float32)
    if DOT:
        acc = _dot(h, w, acc, "tf32", False)
    else:  # keep the loads: a sum over the depth, no product
        acc += tl.sum(h.to(tl.float32), axis=1)[:, None] + tl.sum(w.to(tl.float32), axis=0)[None, :]
    dtype = out_ptr.dtype.element_ty
    tl.store(out_ptr + m[:, None] * stride_ob + n[None, :], (x + acc.to(dtype).to(tl.float32)).to(dtype), mask=tile_ok)


def _graph_us(run, replays: int = 200) -> float:
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        run()
    torch.cuda.current_stream().wait_stream(stream)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        run()
    graph.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(7):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(replays):
            graph.replay()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / replays)
    return sorted(times)[len(times) // 2]


def per_launch_us(launch, batch: int) -> float:
    ws = [torch.randn(D, D, device="cuda", dtype=BF16) * 0.02 for _ in range(LAYERS)]
    h = torch.randn(batch, D, device="cuda", dtype=BF16)
    xs = [torch.randn(batch, D, device="cuda", dtype=BF16) for _ in range(66)]

    def chain(count: int):
        def run():
            for i in range(count):
                launch(h, ws[i % LAYERS], xs[i], xs[i + 1])

        return run

    return (_graph_us(chain(65)) - _graph_us(chain(1))) / 64


def main(out_path: str) -> None:
    rows = {}

    def row_kernel(h, w, x, out):
        _down_residual[(D, 1)](
            h, w, x, out, h.stride(0), x.stride(0), out.stride(0), D, DIM=D, ROWS=1, COLUMNS=D, num_warps=1,
            PDL=True, launch_pdl=True,
        )  # fmt: skip

    rows["row kernel, batch 1"] = per_launch_us(row_kernel, 1)

    rows["tile kernel, batch 16, as the decode step launches it"] = per_launch_us(_tile_into, 16)
    rows["tile kernel, batch 16, its loop compiled in (before ONE_STEP)"] = per_launch_us(
        lambda h, w, x, out: _tile_into(h, w, x, out, one_step=False), 16
    )
    variants = {
        "full": dict(DOT=True, LOAD_H=True, LOAD_X=True, EARLY=True),
        "weights after the wait": dict(DOT=True, LOAD_H=True, LOAD_X=True, EARLY=False),
        "no residual load": dict(DOT=True, LOAD_H=True, LOAD_X=False, EARLY=True),
        "no h load": dict(DOT=True, LOAD_H=False, LOAD_X=True, EARLY=True),
        "no product (sums)": dict(DOT=False, LOAD_H=True, LOAD_X=True, EARLY=True),
        "no loads after the wait, no product": dict(DOT=False, LOAD_H=False, LOAD_X=False, EARLY=True),
    }
    for bn in (16, 32, 64):
        for warps in (1, 2, 4):
            for name, flags in variants.items():
                if (bn, warps) != (16, 2) and name != "full":
                    continue

                def launch(h, w, x, out, flags=flags, bn=bn, warps=warps):
                    _variant[(triton.cdiv(D, bn),)](
                        h, w, x, out, h.stride(0), x.stride(0), out.stride(0), 16, D, D, BM=16, BN=bn, BK=D,
                        num_warps=warps, launch_pdl=True, **flags,
                    )  # fmt: skip

                rows[f"tile {bn} cols, {warps} warps: {name}"] = per_launch_us(launch, 16)
    for name, us in rows.items():
        print(f"{us:6.2f} us  {name}", flush=True)
    info = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__}
    with open(out_path, "w") as f:
        json.dump({**info, "us_per_launch": rows}, f, indent=1)


def _tile_into(h, w, x, out, one_step: bool = True):
    """The decode step's tile kernel, launched as linear_residual launches it, into ``out``; with
    ``one_step`` False, with its loop compiled in (which runs no iteration here), as before ONE_STEP."""
    tile = td._tile_shape(16, w.dtype, D)
    launch = {**td._tile_launch(x.device, 16, tile, D, 1), "ONE_STEP": one_step}
    td._tile_linear_residual[(triton.cdiv(D, td.TILE_COLUMNS), 1)](
        h, w, x, out, x, x, h.stride(0), x.stride(0), out.stride(0), 16, D, D, SPLITS=1, **tile, **launch
    )


if __name__ == "__main__":
    main(sys.argv[1])
