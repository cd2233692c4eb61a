"""Decode kernels alone in CUDA graphs: the row kernels (or tiles) against batched row kernels, per preset
and batch. argv: comma-separated presets. Prints the batched outputs' difference from the kernels before, a
JSON line per variant (us a layer; the head: us a call), and the fastest variant per kernel; writes
$OUT/batched_sweep.json. Its last run (2026-11-30, raw in h200_decode_batched_rows.json, part 3) had a
batched output head, BATCHED_HEAD_ROWS rows a program, since removed; earlier runs listed batches 4, 8
and 16 and variants of rows x values a thread only.
"""

import json
import os
import statistics
import sys

import torch

from muomni.config import load_config
from muomni.models import triton_decode as td
from muomni.models.layers import rope_tables

DEVICE = torch.device("cuda")
DTYPE = torch.bfloat16
OUT = os.environ.get("OUT", "/tmp")
BATCHES = (2, 4)
OPS = ("qkv", "o_proj", "gate_up+down", "down", "head")
VARIANTS = [("rows", {"BATCHED_MAX_BATCH": 0})] + [
    (
        f"batched r{r} v{v} h{h}",
        {"BATCHED_ROWS": r, "BATCHED_PAIRS": r, "BATCHED_VALUES_PER_THREAD": v, "BATCHED_HEAD_ROWS": h},
    )
    for r, v, h in ((1, 128, 8), (1, 64, 8), (2, 128, 8), (2, 64, 8), (1, 128, 4), (1, 64, 4), (1, 64, 16))
]
KNOBS = ("BATCHED_MAX_BATCH", "BATCHED_ROWS", "BATCHED_PAIRS", "BATCHED_VALUES_PER_THREAD", "BATCHED_HEAD_ROWS")
DEFAULTS = {k: getattr(td, k, None) for k in KNOBS}


def timed(fn, reps=20):
    """Median us of one replay of ``fn`` captured as a CUDA graph."""
    fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1000)
    return statistics.median(times)


def weights(*shape):
    return 0.02 * torch.randn(*shape, device=DEVICE, dtype=DTYPE)


def ops(cfg, batch):
    """Each kernel over the preset's layers (its own weights per layer), as functions of no arguments."""
    torch.manual_seed(0)
    d, f, heads, kv_heads, dh = cfg.d_model, cfg.d_ff, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
    layers = [
        {
            "q": weights(heads * dh, d),
            "k": weights(kv_heads * dh, d),
            "v": weights(kv_heads * dh, d),
            "o": weights(d, heads * dh),
            "g": weights(f, d),
            "u": weights(f, d),
            "d": weights(d, f),
            "n": 1 + weights(d),
        }  # fmt: skip
        for _ in range(cfg.n_layers)
    ]
    x = torch.randn(batch, d, device=DEVICE, dtype=DTYPE)
    head = weights(cfg.vocab_size, d)
    hq = torch.randn(batch, heads * dh, device=DEVICE, dtype=DTYPE)
    hf = torch.randn(batch, f, device=DEVICE, dtype=DTYPE)
    cos, sin = (t.to(DEVICE) for t in rope_tables(dh, cfg.ctx_len, cfg.rope_theta))
    pos = torch.tensor([min(272, cfg.ctx_len - 1)], device=DEVICE)
    kc = torch.zeros(batch, kv_heads, cfg.ctx_len, dh, device=DEVICE, dtype=DTYPE)
    vc = torch.zeros_like(kc)
    return {
        "qkv": lambda: [
            td.norm_qkv_rope(x, p["n"], 1e-5, (p["q"], p["k"], p["v"]), None, cos, sin, pos, kc, vc) for p in layers
        ],
        "o_proj": lambda: [td.linear_residual(x, hq, p["o"]) for p in layers],
        "gate_up+down": lambda: [td.swiglu_residual(x, p["n"], 1e-5, (p["g"], p["u"], p["d"])) for p in layers],
        "down": lambda: [td.linear_residual(x, hf, p["d"]) for p in layers],
        "head": lambda: [td.norm_linear(x, layers[0]["n"], 1e-5, head)],
    }


def difference_from_before(cfg, batch):
    """||batched - before|| / ||before|| of every kernel's last output, on the same inputs."""
    out = {}
    for name, fn in ops(cfg, batch).items():
        td.BATCHED_MAX_BATCH = 0
        before = fn()[-1].float()
        td.BATCHED_MAX_BATCH = DEFAULTS["BATCHED_MAX_BATCH"]
        batched = fn()[-1].float()
        out[name] = ((before - batched).norm() / before.norm()).item()
    return out


def main():
    results = []
    presets = sys.argv[1].split(",")
    for preset in presets:
        cfg = load_config(preset)
        for batch in BATCHES:
            print(preset, batch, "difference from before", difference_from_before(cfg, batch), flush=True)
            fns = ops(cfg, batch)
            for label, consts in VARIANTS:
                for k, v in {**DEFAULTS, **consts}.items():
                    setattr(td, k, v)
                row = {"preset": preset, "batch": batch, "variant": label}
                for name, fn in fns.items():
                    row[name] = round(timed(fn) / (1 if name == "head" else cfg.n_layers), 2)
                results.append(row)
                print(json.dumps(row), flush=True)
    with open(f"{OUT}/batched_sweep.json", "w") as f:
        json.dump(results, f, indent=1)
    for preset in presets:
        for batch in BATCHES:
            rows = [r for r in results if r["preset"] == preset and r["batch"] == batch]
            line = f"{preset} b{batch}:"
            for op in OPS:
                before = next(r[op] for r in rows if r["variant"] == "rows")
                best = min(rows, key=lambda r, op=op: r[op])
                line += f" {op} before {before} best {best[op]} ({best['variant']});"
            print(line)


if __name__ == "__main__":
    main()
