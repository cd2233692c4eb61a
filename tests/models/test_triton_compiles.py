"""Every decode kernel compiles for a GPU (sm_90), also on a machine without one.

Triton's interpreter, which runs the kernel tests on the CPU, accepts code that the GPU compiler rejects:
a dtype chosen in a branch that depends on a program's data ran there and failed to compile on an H200.
Here each kernel goes through Triton's compiler for Hopper with the small preset's settings. It runs in a
child process: in this one the interpreter may be on (conftest.py), and it changes Triton's language.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("triton", reason="the kernels are Triton's")

TILE = {"BM": 16, "BN": 16, "BK": 256, "PRECISION": "tf32", "UPCAST": False}
ROPE = {"HEADS": 12, "KV_HEADS": 4, "HALF": 32, "HAS_BIAS": True}
KERNELS = {
    "_partial_attention": {"KV_HEADS": 4, "GROUP": 3, "GROUP_PAD": 4, "HEAD_DIM": 64, "DIM_PAD": 64, "BLOCK_S": 16,
                           "HAS_LAST": True},
    "_merge_splits": {"KV_HEADS": 4, "GROUP": 3, "GROUP_PAD": 4, "HEAD_DIM": 64, "DIM_PAD": 64, "SPLITS_PAD": 64},
    "_norm_qkv_rope": {**ROPE, "PAIRS_PER_BLOCK": 4, "COLUMNS": 1024},
    "_tile_norm_qkv_rope": {**ROPE, **TILE},
    "_norm_linear": {"ROWS": 8, "COLUMNS": 1024},
    "_norm_gate_up": {"ROWS": 1, "COLUMNS": 1024},
    "_down_residual": {"ROWS": 1, "COLUMNS": 2048},
    "_tile_norm_gate_up": TILE,
    "_tile_linear_residual": TILE,
}  # fmt: skip
POINTERS = {"cos_ptr": "*fp32", "sin_ptr": "*fp32", "pos_ptr": "*i64", "last_ptr": "*i64", "valid_ptr": "*u8",
            "m_ptr": "*fp32", "l_ptr": "*fp32", "acc_ptr": "*fp32"}  # fmt: skip

CHILD = """
import json, sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from triton.compiler.errors import CompilationError
from muomni.models import triton_decode as td

kernels, pointers = json.loads(sys.argv[1]), json.loads(sys.argv[2])
found = sorted(n for n, obj in vars(td).items() if isinstance(obj, triton.runtime.jit.JITFunction))
results = {"found": found}
for name, constexprs in kernels.items():
    kernel = getattr(td, name)
    signature = {}
    for arg in kernel.arg_names:
        if arg in constexprs:
            signature[arg] = "constexpr"
        elif arg.endswith("_ptr"):
            signature[arg] = pointers.get(arg, "*bf16")
        else:
            signature[arg] = "fp32" if arg in ("eps", "scale") else "i32"
    positions = {(kernel.arg_names.index(k),): v for k, v in constexprs.items()}
    try:
        source = ASTSource(fn=kernel, signature=signature, constexprs=positions)
        triton.compile(source, target=GPUTarget("cuda", 90, 32))
        results[name] = "ok"
    except CompilationError as e:
        results[name] = "error: " + str(e)[-600:]
    except Exception as e:  # no CUDA tool chain here (ptxas): the front end passed, the rest cannot run
        results[name] = "no back end: " + type(e).__name__
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def compiled() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    args = [sys.executable, "-c", CHILD, json.dumps(KERNELS), json.dumps(POINTERS)]
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_every_kernel_is_listed(compiled: dict[str, str]) -> None:
    assert compiled["found"] == sorted(KERNELS)


@pytest.mark.parametrize("name", sorted(KERNELS))
def test_kernel_compiles_for_hopper(name: str, compiled: dict[str, str]) -> None:
    if compiled[name].startswith("no back end"):
        pytest.skip(compiled[name])
    assert compiled[name] == "ok", compiled[name]
