"""Every decode kernel compiles for a GPU (sm_90) and fits its shared memory, also on a machine without one.

Triton's interpreter, which runs the kernel tests on the CPU, accepts code that a GPU rejects: a dtype
chosen in a branch that depends on a program's data ran there and failed to compile on an H200, and fp32
tiles for 64 rows asked for more shared memory than an H200 has. Here each kernel goes through Triton's
compiler for Hopper with the small preset's settings (the tile kernels with the configuration their
wrappers choose, for 16 and 64 rows in bf16 and fp32), its pointers and integers aligned as the launcher
finds them at run time (only then are a tile's loads staged in shared memory, which is where it could
overflow). It runs in a child process: in this one the
interpreter may be on (conftest.py), and it changes Triton's language.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("triton", reason="the kernels are Triton's")

# Every kernel as a Hopper GPU launches it: with programmatic dependent launch (the waits compiled in).
PDL = {"PDL": True}
ROPE = {"HEADS": 12, "KV_HEADS": 4, "HALF": 32, "HAS_BIAS": True, **PDL}
ROW_KERNELS = {
    "_partial_attention": {"KV_HEADS": 4, "GROUP": 3, "GROUP_PAD": 4, "QUERY_ROWS": 16, "HEAD_DIM": 64, "DIM_PAD": 64,
                           "BLOCK_S": 64, "HAS_LAST": True, "PRECISION": "tf32", "UPCAST": False, "WHOLE": False,
                           **PDL},
    "_merge_splits": {"KV_HEADS": 4, "GROUP": 3, "GROUP_PAD": 4, "HEAD_DIM": 64, "DIM_PAD": 64, "SPLITS_PAD": 64,
                      **PDL},
    "_norm_qkv_rope": {**ROPE, "DIM": 768, "PAIRS_PER_BLOCK": 4, "COLUMNS": 1024},
    "_norm_linear": {"DIM": 768, "ROWS": 8, "COLUMNS": 1024, **PDL},
    "_norm_gate_up": {"DIM": 768, "ROWS": 1, "COLUMNS": 1024, **PDL},
    "_down_residual": {"DIM": 2048, "ROWS": 1, "COLUMNS": 2048, **PDL},
    # The batched row kernels at their most rows, as their wrappers launch them (in CHILD).
    "_batched_norm_qkv_rope": {**ROPE, "DIM": 768, "PAIRS_PER_BLOCK": 1},
    "_batched_norm_gate_up": {"DIM": 768, "ROWS": 1},
    "_batched_linear_residual": {"DIM": 2048, "ROWS": 1},
}  # fmt: skip
# The tile kernels launch with PDL or without it by their rows, as their wrappers choose (in CHILD).
TILE_KERNELS = {"_tile_norm_qkv_rope": ROPE, "_tile_norm_gate_up": {}, "_tile_linear_residual": {}}
# Called by the kernels above, compiled with them (the split-K ones only when SPLITS > 1).
HELPERS = {"_head_block", "_head_weights", "_qkv_biases", "_rope_angles", "_qkv_epilogue", "_depth_range",
           "_gather_pair", "_arrive", "_sum_splits", "_let_next_kernel_start", "_wait_for_inputs", "_weights_t",
           "_batch_rows", "_gain", "_gained_rows", "_dot", "_normed_pair_first", "_normed_pair_steps", "_pairs",
           "_row_block_pairs", "_pair_weights", "_pair_gain", "_gained_pair_rows", "_pair_rows"}  # fmt: skip
# Tiles as shallow kernels take them (256 deep, unsplit) and as deep ones do (SPLIT_DEPTH, 4 splits).
SPLIT_K = {"_tile_norm_qkv_rope", "_tile_norm_gate_up", "_tile_linear_residual"}
CASES = {f"{name}-bf16": [name, constexprs, "bfloat16", None, None] for name, constexprs in ROW_KERNELS.items()} | {
    f"{name}-{dtype}-{rows}-{dim}": [
        name, {**constexprs, "SPLITS": 4 if dim > 256 else 1} if name in SPLIT_K else constexprs, dtype, rows, dim
    ]
    for name, constexprs in TILE_KERNELS.items()
    for dtype in ("bfloat16", "float32")
    for rows in (16, 64)
    for dim in (256, 2048)
}  # fmt: skip
# Attention whose one program per row walks the whole cache and stores the output (no merge kernel).
CASES["_partial_attention-whole-bf16"] = ["_partial_attention", {**ROW_KERNELS["_partial_attention"], "WHOLE": True},
                                          "bfloat16", None, None]  # fmt: skip
# Pointers that are not the model's dtype (the RoPE tables, positions, validity, the split partials and counts).
POINTERS = {"cos_ptr": "*fp32", "sin_ptr": "*fp32", "pos_ptr": "*i64", "last_ptr": "*i64", "valid_ptr": "*u8",
            "m_ptr": "*fp32", "l_ptr": "*fp32", "acc_ptr": "*fp32",
            "part_ptr": "*fp32", "lock_ptr": "*i32"}  # fmt: skip
SHARED_MEMORY = 232_448  # bytes a block may use on sm_90 (H100, H200)

CHILD = """
import json, sys
import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from triton.compiler.errors import CompilationError
from muomni.models import decode_launch, triton_decode as td
from muomni.models.decode_kernels import attention, batched, pdl, rows as row_kernels, tiles

cases, pointers = json.loads(sys.argv[1]), json.loads(sys.argv[2])
kernels = {n: obj for m in (attention, batched, pdl, row_kernels, tiles) for n, obj in vars(m).items()
           if isinstance(obj, triton.runtime.jit.JITFunction) and obj.fn.__module__ == m.__name__}
results = {"found": sorted(kernels)}
for case, (name, constexprs, dtype, rows, dim) in cases.items():
    kernel, options = kernels[name], {}
    if name.startswith("_batched"):  # the configuration the wrapper would choose, at its most rows
        per_program = constexprs.get("ROWS", constexprs.get("PAIRS_PER_BLOCK"))
        shape = td._batched_shape(td.BATCHED_MAX_BATCH, per_program, constexprs["DIM"])
        options["num_warps"] = shape.pop("num_warps")
        constexprs = {**constexprs, **shape}
    if rows is not None:  # the configuration the wrapper would choose
        choose = td._gate_up_shape if name == "_tile_norm_gate_up" else td._tile_shape
        shape = choose(rows, getattr(torch, dtype), dim)
        options["num_warps"] = shape.pop("num_warps")
        constexprs = {**constexprs, **shape}
        if name == "_tile_norm_qkv_rope":
            constexprs["BN"] = td.QKV_TILE_PAIRS
        # PDL, and with it the first step's weights before the wait, as on a Hopper GPU for these rows; no
        # loop where every program's share of the depth is one step (bf16 256 deep unsplit)
        constexprs["ONE_STEP"] = td.ONE_STEP_TILES and triton.cdiv(dim, constexprs["SPLITS"]) <= constexprs["BK"]
        constexprs["PDL"] = rows <= decode_launch.PDL_MAX_BATCH
        constexprs["EARLY"] = constexprs["PDL"] or constexprs["ONE_STEP"]
    value = "*bf16" if dtype == "bfloat16" else "*fp32"
    signature = {}
    for arg in kernel.arg_names:
        if arg in constexprs:
            signature[arg] = "constexpr"
        elif arg.endswith("_ptr"):
            signature[arg] = pointers.get(arg, value)
        else:
            signature[arg] = "fp32" if arg in ("eps", "scale") else "i32"
    positions = {(kernel.arg_names.index(k),): v for k, v in constexprs.items()}
    # As Triton's launcher specializes them for the presets' aligned tensors and shapes: every pointer and
    # integer divisible by 16. Only then does its software pipelining stage a tile's loads in shared memory.
    aligned = {(i,): [["tt.divisibility", 16]] for i, arg in enumerate(kernel.arg_names)
               if signature[arg] not in ("constexpr", "fp32")}  # fmt: skip
    try:
        source = ASTSource(fn=kernel, signature=signature, constexprs=positions, attrs=aligned)
        results[case] = triton.compile(source, target=GPUTarget("cuda", 90, 32), options=options).metadata.shared
    except CompilationError as e:
        results[case] = "error: " + str(e)[-600:]
    except Exception as e:  # no CUDA tool chain here (ptxas): the front end passed, the rest cannot run
        results[case] = "no back end: " + type(e).__name__
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def compiled() -> dict[str, object]:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    args = [sys.executable, "-c", CHILD, json.dumps(CASES), json.dumps(POINTERS)]
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_every_kernel_is_listed(compiled: dict[str, object]) -> None:
    assert compiled["found"] == sorted([*ROW_KERNELS, *TILE_KERNELS, *HELPERS])


@pytest.mark.parametrize("case", sorted(CASES))
def test_kernel_compiles_for_hopper(case: str, compiled: dict[str, object]) -> None:
    result = compiled[case]
    if isinstance(result, str) and result.startswith("no back end"):
        pytest.skip(result)
    assert isinstance(result, int), result  # the shared memory it asks for, or the compiler's error
    assert result <= SHARED_MEMORY, f"{case} asks for {result} bytes of shared memory"
