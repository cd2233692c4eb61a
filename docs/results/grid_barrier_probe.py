"""What a kernel boundary costs inside a CUDA graph, against a grid-wide barrier inside one persistent kernel.

    PYTHONPATH=. python3 docs/results/grid_barrier_probe.py OUT.json

The question behind it: batch-16 decoding is some 27 kernels a step of a few microseconds each, and every
boundary between two of them costs its launch and the wait for the one before, PDL or not. A persistent
kernel would run a layer's stages as phases of one launch, separated by grid-wide barriers (every program
counts its arrival with one atomic and polls until all have arrived). That pays only if a barrier costs
less than a boundary. Both run the same trivial work: each of G programs reads what another program wrote
in the step before and writes its own value plus one (a real dependency across programs, checked at the
end). Per step = (time of K steps - time of 1 step) / (K - 1), from CUDA graph replays, so that what a
launch costs once cancels out.
"""

import json
import sys

import torch
import triton
import triton.language as tl
from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait


@triton.jit
def _step_kernel(src_ptr, dst_ptr, G: tl.constexpr, PDL: tl.constexpr):
    if PDL:
        gdc_launch_dependents()
        gdc_wait()
    pid = tl.program_id(0)
    v = tl.load(src_ptr + (pid + 1) % G)
    tl.store(dst_ptr + pid, v + 1)


@triton.jit
def _barrier(count_ptr, target, POLL_ATOMIC: tl.constexpr):
    """Every program's stores before its arrival (release), none of its loads after until all arrived."""
    tl.debug_barrier()
    tl.atomic_add(count_ptr, 1, sem="release", scope="gpu")
    if POLL_ATOMIC:
        seen = tl.atomic_add(count_ptr, 0, sem="acquire", scope="gpu")
        while seen < target:
            seen = tl.atomic_add(count_ptr, 0, sem="acquire", scope="gpu")
    else:
        seen = tl.load(count_ptr, volatile=True)
        while seen < target:
            seen = tl.load(count_ptr, volatile=True)
        tl.atomic_add(count_ptr, 0, sem="acquire", scope="gpu")  # the acquire, once
    tl.debug_barrier()


@triton.jit
def _phases_kernel(buf_ptr, count_ptr, steps, G: tl.constexpr, POLL_ATOMIC: tl.constexpr):
    pid = tl.program_id(0)
    for p in range(steps):
        src = buf_ptr + (p % 2) * G
        dst = buf_ptr + ((p + 1) % 2) * G
        v = tl.load(src + (pid + 1) % G, cache_modifier=".cg")
        tl.store(dst + pid, v + 1)
        _barrier(count_ptr, (p + 1) * G, POLL_ATOMIC)


def _graph_time_us(run, replays: int = 200) -> float:
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
    for _ in range(5):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(replays):
            graph.replay()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / replays)
    return sorted(times)[len(times) // 2]


def kernels(g: int, steps: int, pdl: bool) -> tuple[float, bool]:
    bufs = [torch.zeros(g, dtype=torch.int32, device="cuda") for _ in range(2)]

    def run():
        bufs[0].zero_()
        for p in range(steps):
            extra = {"launch_pdl": True} if pdl else {}
            _step_kernel[(g,)](bufs[p % 2], bufs[(p + 1) % 2], G=g, PDL=pdl, num_warps=2, **extra)

    us = _graph_time_us(run)
    ok = bool((bufs[steps % 2] == steps).all())
    return us, ok


def phases(g: int, steps: int, poll_atomic: bool) -> tuple[float, bool]:
    buf = torch.zeros(2 * g, dtype=torch.int32, device="cuda")
    count = torch.zeros(1, dtype=torch.int32, device="cuda")

    def run():
        buf.zero_()
        count.zero_()
        _phases_kernel[(g,)](buf, count, steps, G=g, POLL_ATOMIC=poll_atomic, num_warps=2)

    us = _graph_time_us(run)
    ok = bool((buf[(steps % 2) * g : (steps % 2 + 1) * g] == steps).all())
    return us, ok


def main(out_path: str) -> None:
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    rows = []
    for g in (16, 64, sms):
        for name, fn, arg in (
            ("kernels, PDL", kernels, True),
            ("kernels, no PDL", kernels, False),
            ("barrier, volatile poll", phases, False),
            ("barrier, atomic poll", phases, True),
        ):
            one, ok1 = fn(g, 1, arg)
            many, ok2 = fn(g, 65, arg)
            per_step = (many - one) / 64
            rows.append({"programs": g, "variant": name, "us_1": one, "us_65": many, "us_per_step": per_step,
                         "correct": ok1 and ok2})  # fmt: skip
            print(f"{g:4d} programs  {name:24s} {per_step:6.2f} us a step  (1: {one:.2f}, 65: {many:.2f}) "
                  f"{'ok' if ok1 and ok2 else 'WRONG'}", flush=True)  # fmt: skip
    info = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__}
    with open(out_path, "w") as f:
        json.dump({**info, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1])
