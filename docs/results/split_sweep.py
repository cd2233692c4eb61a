"""The split-K sweep of the decode step's tile kernels: small preset, batch 16 and 64, per layer.

    PYTHONPATH=. python3 docs/results/split_sweep.py OUT.json

For each tile depth and warp count, and each split count, the 12 layers' calls of one kernel are captured
in a CUDA graph and replayed (``do_bench_cudagraph``): kernel times without the launch from Python, per
layer. Run before gate/up's split was dropped (``GATE_UP_SPLITS``: splitting it never won, so the kernel no
longer takes one; on the code since, that constant is simply ignored). The weights of one kernel's 12
layers stay in L2 when they fit (the output projection's 14 MB, the attention input's 24 MB), which a
decode step does not allow: the end-to-end decoding rows decide where the two disagree.
"""

import itertools
import json
import sys
from pathlib import Path

import torch
from triton.testing import do_bench_cudagraph

from muomni.config import load_config
from muomni.models import triton_decode as td
from muomni.models.layers import rope_tables
from muomni.models.thinker import Thinker

cfg = load_config("small")
torch.manual_seed(0)
model = Thinker(cfg).cuda().to(torch.bfloat16).eval()
layers = list(model.model.layers)
D, FF = cfg.d_model, cfg.d_ff
head_dim = D // cfg.n_heads
cos, sin = (t.cuda() for t in rope_tables(head_dim, cfg.ctx_len, cfg.rope_theta))
pos = torch.tensor([300], device="cuda")
SPLITS = (1, 2, 3, 4, 6, 8)


def per_layer_us(fn) -> float:
    return do_bench_cudagraph(fn, rep=200, return_mode="median") * 1e3 / len(layers)


def kernels(batch: int) -> dict:
    x, y = (torch.randn(batch, D, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    h = torch.randn(batch, FF, device="cuda", dtype=torch.bfloat16)
    k_cache = torch.zeros(batch, cfg.n_kv_heads, cfg.ctx_len, head_dim, device="cuda", dtype=torch.bfloat16)
    v_cache = torch.zeros_like(k_cache)

    def qkv() -> None:
        for layer in layers:
            a = layer.self_attn
            weights = (a.q_proj.weight, a.k_proj.weight, a.v_proj.weight)
            td.norm_qkv_rope(x, layer.input_layernorm.weight, 1e-5, weights, None, cos, sin, pos, k_cache, v_cache)

    def o() -> None:
        for layer in layers:
            td.linear_residual(x, y, layer.self_attn.o_proj.weight)

    def down() -> None:
        for layer in layers:
            td.linear_residual(x, h, layer.mlp.down_proj.weight)

    def mlp() -> None:
        for layer in layers:
            m = layer.mlp
            weights = (m.gate_proj.weight, m.up_proj.weight, m.down_proj.weight)
            td.swiglu_residual(x, layer.post_attention_layernorm.weight, 1e-5, weights)

    return {"qkv": qkv, "o": o, "down": down, "mlp": mlp}


res: dict = {}
best = None
for batch in (16, 64):
    calls = kernels(batch)
    for depth, warps in itertools.product((128, 256), (2, 4)):
        td.TILE_DEPTH, td.TILE_WARPS = depth, warps
        key = f"b{batch}_d{depth}_w{warps}"
        for s in SPLITS:
            td.LINEAR_SPLITS = s
            res[f"{key}_o_s{s}"] = per_layer_us(calls["o"])
            res[f"{key}_down_s{s}"] = per_layer_us(calls["down"])
        linear = min(SPLITS, key=lambda s, key=key: res[f"{key}_o_s{s}"] + res[f"{key}_down_s{s}"])
        td.LINEAR_SPLITS = linear
        for s in SPLITS[:-1]:
            td.QKV_SPLITS = td.GATE_UP_SPLITS = s
            res[f"{key}_qkv_s{s}"] = per_layer_us(calls["qkv"])
            res[f"{key}_mlp_s{s}"] = per_layer_us(calls["mlp"])
        qkv = min(SPLITS[:-1], key=lambda s, key=key: res[f"{key}_qkv_s{s}"])
        gate_up = min(SPLITS[:-1], key=lambda s, key=key: res[f"{key}_mlp_s{s}"])
        total = res[f"{key}_o_s{linear}"] + res[f"{key}_qkv_s{qkv}"] + res[f"{key}_mlp_s{gate_up}"]
        res[f"{key}_best"] = {"linear": linear, "qkv": qkv, "gate_up": gate_up, "us_per_layer": total}
        print(key, res[f"{key}_best"], flush=True)
    if batch == 16:
        best = min(((k, v) for k, v in res.items() if k.endswith("_best")), key=lambda kv: kv[1]["us_per_layer"])
res["chosen_b16"] = best
Path(sys.argv[1]).write_text(json.dumps(res, indent=1))
