"""What a GPU's kernels took, from a profile: by kind (matrix products, attention, Triton's fused kernels,
muomni's own, the optimizer, copies), the kernels that took the most device time, and what each kernel adds
to the device's time (which, unlike its duration, holds where kernels overlap: programmatic dependent
launch starts a kernel while the one before it runs). Used by ``muomni profile``.
"""

from __future__ import annotations

import functools
import math

from torch.autograd import DeviceType

# Kinds of device kernels, by what their names contain (the first match wins: cuDNN's attention kernels
# also name the architecture, as cuBLAS's do).
KERNEL_KINDS = (
    ("attention", ("flash", "fmha", "sdpa", "attention")),
    ("matrix products", ("gemm", "nvjet", "cutlass", "xmma", "sm90_", "sm80_", "cublas")),
    # The gradient norm is the optimizer's: PyTorch's foreach norm, or muomni's sum of squares (bf16 weights).
    ("optimizer", ("adam", "sgd", "multi_tensor_apply", "sum_of_squares")),
    ("copies", ("memcpy", "memset")),
    ("fused elementwise (Triton)", ("triton",)),
    # Eager PyTorch's own pointwise and reduction kernels (at::native::elementwise_kernel, reduce_kernel, ...).
    ("elementwise (PyTorch)", ("at::native::",)),
)


MUOMNI_KERNELS = "muomni's kernels (Triton)"


@functools.cache
def _muomni_kernel_names() -> frozenset[str]:
    """The names of muomni's own Triton kernels (the decode step's, the loss's), as profilers show them:
    the kernel's function name. Empty where Triton is not installed."""
    try:
        import triton

        from muomni.models import split_kv, triton_decode
        from muomni.training import triton_ce
    except ImportError:
        return frozenset()
    modules = (triton_decode, split_kv, triton_ce)
    return frozenset(n for m in modules for n, f in vars(m).items() if isinstance(f, triton.runtime.KernelInterface))


def kernel_kind(name: str) -> str:
    lowered = name.lower()
    kind = next((kind for kind, marks in KERNEL_KINDS if any(m in lowered for m in marks)), "other")
    return MUOMNI_KERNELS if kind == "other" and name in _muomni_kernel_names() else kind


def device_breakdown(kernels: list[tuple[str, float, float]], steps: int) -> dict[str, float]:
    """Device time per step (us) by kind of kernel, and the time the device ran nothing.

    ``kernels``: (name, start, duration) in us. ``idle`` is the span from the first kernel's start to the
    last one's end less the time at least one kernel ran (kernels of several streams may overlap).
    """
    totals: dict[str, float] = {}
    for name, _, duration in kernels:
        kind = kernel_kind(name)
        totals[kind] = totals.get(kind, 0.0) + duration / steps
    added = critical_path(kernels, steps).values()
    idle = sum(i for _, i, _ in added)
    return {**totals, "idle": idle, "span": idle + sum(b for b, _, _ in added)}


def device_kernels(events: list) -> list[tuple[str, float, float]]:
    """The device's kernels and copies, without the ranges user annotations draw on its timeline."""
    return [
        (e.name, e.time_range.start, e.time_range.elapsed_us())
        for e in events
        if e.device_type == DeviceType.CUDA and not getattr(e, "is_user_annotation", False)
    ]


def top_kernels(kernels: list[tuple[str, float, float]], steps: int, n: int = 15) -> list[str]:
    """The ``n`` kernels that take the most device time, a line each: time and launches per step, the time
    of one launch, the kind and the name. The profiler's operator table mixes them with the ranges around
    them, whose device time counts their kernels again."""
    totals: dict[str, list[float]] = {}
    for name, _, duration in kernels:
        entry = totals.setdefault(name, [0.0, 0])
        entry[0] += duration
        entry[1] += 1
    ranked = sorted(totals.items(), key=lambda kv: -kv[1][0])[:n]
    lines = [f"top kernels by device time ({len(totals)} distinct): us per step, launches per step, us each, kind"]
    for name, (us, launches) in ranked:
        short = name if len(name) <= 90 else name[:87] + "..."
        lines.append(
            f"{us / steps:10.1f} {launches / steps:7.1f} {us / launches:9.1f}  {kernel_kind(name):26s} {short}"
        )
    return lines


def critical_path(kernels: list[tuple[str, float, float]], steps: int) -> dict[str, tuple[float, float, float]]:
    """What each kernel adds to the device's time, per step (us): {name: (busy, idle, launches)}.

    ``kernels``: (name, start, duration) in us. In order of start, a kernel adds its end past the latest end
    before it: ``idle`` the part before it started (the device ran nothing), ``busy`` the rest; a kernel that
    ends before that adds nothing. The sums over all kernels are the span from the first start to the last
    end. With programmatic dependent launch (the decode kernels on Hopper GPUs) a kernel starts while the one
    before it runs and waits inside it, so its duration counts that wait: what it adds does not.
    """
    added: dict[str, list[float]] = {}
    reached = -math.inf
    for name, start, duration in sorted(kernels, key=lambda k: k[1]):
        entry = added.setdefault(name, [0.0, 0.0, 0.0])
        entry[2] += 1 / steps
        end = start + duration
        if end > reached:
            if reached > -math.inf:
                entry[1] += max(0.0, start - reached) / steps
            entry[0] += (end - max(start, reached)) / steps
            reached = end
    return {name: (busy, idle, launches) for name, (busy, idle, launches) in added.items()}


def critical_path_lines(kernels: list[tuple[str, float, float]], steps: int, n: int = 15) -> list[str]:
    """:func:`critical_path`'s ``n`` kernels that add the most, a line each, after the step's total."""
    added = critical_path(kernels, steps)
    busy = sum(b for b, _, _ in added.values())
    idle = sum(i for _, i, _ in added.values())
    lines = [
        f"{busy + idle:.1f} us on the device ({busy:.1f} busy, {idle:.1f} idle); what each kernel adds "
        "(its end past the latest end before it): busy us, idle us before it, launches, name"
    ]
    for name, (b, i, launches) in sorted(added.items(), key=lambda kv: -(kv[1][0] + kv[1][1]))[:n]:
        short = name if len(name) <= 90 else name[:87] + "..."
        lines.append(f"{b:8.2f} {i:7.2f} {launches:7.1f}  {short}")
    return lines


def print_breakdown(breakdown: dict[str, float]) -> None:
    span = breakdown.pop("span")
    parts = [f"{kind} {us / 1e3:.2f} ms" for kind, us in sorted(breakdown.items(), key=lambda kv: -kv[1])]
    print(f"device time per step ({span / 1e3:.2f} ms from first kernel to last): " + ", ".join(parts))
