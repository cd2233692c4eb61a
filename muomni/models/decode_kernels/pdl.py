"""Programmatic dependent launch (PDL) inside the decode kernels: Hopper's grid dependency control.

Each kernel lets the next one start while it runs (:func:`_let_next_kernel_start`), and the next one issues
the loads that depend on no kernel before it, then waits (:func:`_wait_for_inputs`). When and for which
batches the kernels launch with it: ``USE_PDL`` and ``PDL_MAX_BATCH`` in :mod:`muomni.models.decode_launch`.
"""

# No ``from __future__ import annotations`` in the kernel modules: Triton 3.1 (torch 2.5's) runs kernels in
# its interpreter with their constexpr parameters as plain ints when the annotations are strings, and
# tl.arange refuses them.
import triton
import triton.language as tl

try:  # Hopper's grid dependency control, in Triton from 3.3
    from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait
except ImportError:  # pragma: no cover - older Triton: the kernels launch one after another, as before
    gdc_launch_dependents = gdc_wait = None


@triton.jit
def _let_next_kernel_start(PDL: tl.constexpr):
    """With PDL, allow the next kernel's launch once every program of this one has started."""
    if PDL:
        gdc_launch_dependents()


@triton.jit
def _wait_for_inputs(PDL: tl.constexpr):
    """With PDL, wait here until the kernel before has finished and its writes are visible.

    Every program of a kernel launched with PDL must pass here before it reads anything a kernel wrote or
    stores anything, and pass here at all: the kernel after it waits for this one only, so this one must
    not finish before the one it follows.
    """
    if PDL:
        gdc_wait()
