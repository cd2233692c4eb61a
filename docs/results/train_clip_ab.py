"""Small +all training row, gradients clipped by a pass of their own before the fused AdamW (old) or inside
it, as the divisor its kernel takes (new). argv: variant out.json ; run one variant per process."""

import json
import sys

import torch

import muomni.training.trainer as tr
from muomni.bench.train import _spec, rows_for
from muomni.bench.train_worker import run_row
from muomni.config import load_config

variant, out = sys.argv[1], sys.argv[2]
if variant == "old":
    fused_step = tr.step_unless

    def clip_first(optimizer, skip, clip=None):  # noqa: ANN001, ANN201
        if clip is not None:  # clip_grad_norm_'s multiplication, on the norm already computed
            norm, max_norm = clip
            grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
            torch._foreach_mul_(grads, torch.clamp(max_norm / (norm + 1e-6), max=1.0))
        fused_step(optimizer, skip)

    tr.step_unless = clip_first
row = [r for r in rows_for(torch.device("cuda")) if r.name == "+all"][0]
spec = _spec(load_config("small"), row, "muomni", 5, 30)
r = run_row(spec)
r["variant"] = variant
with open(out, "w") as f:
    json.dump(r, f)
times = sorted(r["step_times"])
print(
    "ROW",
    variant,
    round(r["tokens_per_s"]),
    "tok/s mfu",
    round(r["mfu"] * 100, 2),
    "median ms",
    round(times[len(times) // 2] * 1e3, 2),
    "peak GiB",
    round(r["peak_memory_bytes"] / 2**30, 2),
    "val",
    r["val_loss"],
    flush=True,
)
