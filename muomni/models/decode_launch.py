"""How the decode kernels of :mod:`muomni.models.triton_decode` and :mod:`muomni.models.split_kv`
launch: with programmatic dependent launch or not (``USE_PDL``, ``PDL_MAX_BATCH``: :func:`_launch`), and
how their ``tl.dot`` multiplies (:func:`_dot_precision`). The PDL instructions inside the kernels are in
:mod:`muomni.models.decode_kernels.pdl`.
"""

import functools
import os

import torch

from muomni.models.decode_kernels.pdl import gdc_wait

# Programmatic dependent launch (PDL; Hopper and later, CUDA graphs keep it): each kernel lets the next one
# start while it runs, and the next one issues the loads that depend on no kernel before it (weights, norm
# gains, biases) and then waits, at `_wait_for_inputs`, until the kernel before it has finished and its
# writes are visible; only then does it read activations, positions or caches, or store anything. A
# decode step is some 70 kernels of a few microseconds, each mostly the latency of its launch and of its
# first loads: with PDL those pass while the kernel before it still runs. False launches every kernel
# only once the one before has finished. Up to PDL_MAX_BATCH rows: on an H200, alternating processes on one
# start (docs/results/h200_decode_pdl_ab.json, h200_decode_b64_ab.json), small preset batch 1 ran 5,404
# and 5,404 tokens/s with PDL against 3,968 and 4,018 without, batch 16 41,479 and 41,414 against 40,416
# and 41,204 (42,698 and 41,816 with the tiles' first weights before the wait, see
# decode_kernels.tiles._weights_t), but batch 64 82,807 and 82,837 against 104,856 and 105,314.
USE_PDL = True
PDL_MAX_BATCH = 16


def _pdl_in_triton() -> bool:
    """Whether this Triton has the grid dependency instructions and the ``launch_pdl`` launch option."""
    if gdc_wait is None:
        return False
    try:
        from triton.backends.nvidia.compiler import CUDAOptions
    except ImportError:  # pragma: no cover - a Triton without the NVIDIA back end
        return False
    return "launch_pdl" in getattr(CUDAOptions, "__dataclass_fields__", {})


@functools.cache
def _pdl_on(device: torch.device) -> bool:
    """Whether kernels on ``device`` launch with PDL: NVIDIA, compute capability 9 or more, Triton has it."""
    if device.type != "cuda" or torch.version.hip or os.environ.get("TRITON_INTERPRET") == "1":
        return False
    return torch.cuda.get_device_capability(device)[0] >= 9 and _pdl_in_triton()


def pdl_max_batch(device: torch.device) -> int:
    """The most rows for which the decode kernels on ``device`` launch with PDL (0: none do)."""
    return PDL_MAX_BATCH if USE_PDL and _pdl_on(device) else 0


def _launch(device: torch.device, batch: int) -> dict:
    """The kernels' ``PDL`` constexpr and, with it on, Triton's launch option (see ``USE_PDL``)."""
    if batch <= pdl_max_batch(device):
        return {"PDL": True, "launch_pdl": True}
    return {"PDL": False}


def _dot_precision(dtype: torch.dtype) -> dict:
    """How the kernels' ``tl.dot`` multiplies operands of ``dtype``: fp32 ones in full precision, not TF32.

    Triton's interpreter multiplies 16-bit operands wrongly (a bf16 16 x 16 product was off by 1e10), so
    there they are widened to fp32 first: the products of bf16 values are exact in fp32, as a GPU's
    tensor cores form them, so only the order of the fp32 sums differs.
    """
    upcast = os.environ.get("TRITON_INTERPRET") == "1" and dtype != torch.float32
    precision = "ieee" if dtype == torch.float32 or upcast else "tf32"  # tf32: the default, unused for 16 bits
    return {"PRECISION": precision, "UPCAST": upcast}
