"""The tiles' first weights staged for the tensor cores before the PDL wait (``STAGED_WEIGHTS``, which commit
853d305 added and d1efa7d took out again): where the compiled kernels stage them, and what the tiny
preset's output projection tile costs a launch with and without it. Run it on 853d305's tree:

    PYTHONPATH=.:docs/results python3 docs/results/tile_staged_probe.py OUT.json

Part 1, without a GPU too: each bf16 tile kernel of 16 rows compiled for sm_90 (256 deep unsplit, and 1,024
deep in 4 splits), with and without STAGE; counted in its PTX, the ldmatrix instructions (loads from shared
memory into the tensor cores' operand registers) before and after ``griddepcontrol.wait``, and the barriers
after it. Part 2, on a GPU: the tile timed as tile_latency_probe.py times it (64 chained launches with PDL
in a CUDA graph), twice each way, alternating.
"""

import json
import sys

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from muomni.models import triton_decode as td
from muomni.models.decode_kernels import tiles

POINTERS = {"cos_ptr": "*fp32", "sin_ptr": "*fp32", "pos_ptr": "*i64", "part_ptr": "*fp32", "lock_ptr": "*i32"}
ROPE = {"HEADS": 4, "KV_HEADS": 2, "HALF": 32, "HAS_BIAS": False}


def _signature(kernel, constexprs: dict) -> dict:
    def kind(arg: str) -> str:
        if arg in constexprs:
            return "constexpr"
        if arg.endswith("_ptr"):
            return POINTERS.get(arg, "*bf16")
        return "fp32" if arg == "eps" else "i32"

    return {arg: kind(arg) for arg in kernel.arg_names}


def ptx_counts() -> dict:
    counts = {}
    for name, extra in (("_tile_linear_residual", {}), ("_tile_norm_gate_up", {}), ("_tile_norm_qkv_rope", ROPE)):
        kernel = getattr(tiles, name)
        for dim, splits in ((256, 1), (1024, 4)):
            for stage in (False, True):
                shape = (td._gate_up_shape if "gate" in name else td._tile_shape)(16, torch.bfloat16, dim)
                warps = shape.pop("num_warps")
                if "qkv" in name:
                    shape["BN"] = td.QKV_TILE_PAIRS
                one_step = dim // splits <= shape["BK"]
                constexprs = {**extra, **shape, "SPLITS": splits, "PDL": True, "EARLY": True, "ONE_STEP": one_step}
                constexprs["STAGE"] = stage
                signature = _signature(kernel, constexprs)
                positions = {(kernel.arg_names.index(n),): v for n, v in constexprs.items()}
                aligned = {(i,): [["tt.divisibility", 16]] for i, a in enumerate(kernel.arg_names)
                           if signature[a] not in ("constexpr", "fp32")}  # fmt: skip
                source = ASTSource(fn=kernel, signature=signature, constexprs=positions, attrs=aligned)
                lines = triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": warps})
                lines = lines.asm["ptx"].splitlines()
                wait = next(i for i, line in enumerate(lines) if "griddepcontrol.wait" in line)
                key = f"{name} {dim} deep in {splits} STAGE={stage}"
                counts[key] = {
                    "ldmatrix before the wait": sum("ldmatrix" in line for line in lines[:wait]),
                    "ldmatrix after": sum("ldmatrix" in line for line in lines[wait:]),
                    "bar.sync after": sum("bar.sync" in line for line in lines[wait:]),
                }
                print(key, counts[key], flush=True)
    return counts


def launch_times() -> dict:
    from tile_latency_probe import _tile_into, per_launch_us

    rows = {}
    for run in range(2):
        for staged in (False, True):
            td.STAGED_WEIGHTS = staged
            rows[f"STAGED_WEIGHTS={staged}, run {run}"] = us = per_launch_us(_tile_into, 16)
            print(f"{us:.3f} us a launch, STAGED_WEIGHTS={staged}", flush=True)
    return rows


if __name__ == "__main__":
    result = {"triton": triton.__version__, "ptx": ptx_counts()}
    if torch.cuda.is_available():
        result |= {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "us_per_launch": launch_times()}
    with open(sys.argv[1], "w") as f:
        json.dump(result, f, indent=1)
