"""The CPU's +all training row of the default model with the residual stream in fp32 or bf16 (the bench's
row worker and schedule: 1 warm-up step, 8 timed ones). argv: variant (fp32|bf16) out.json ; run one
variant per process."""

import json
import statistics
import sys

import torch

from muomni.bench.train import _spec, rows_for
from muomni.bench.train_worker import run_row
from muomni.config import load_config

variant, out = sys.argv[1:3]
warmup, steps = 1, 8
total = warmup + steps
cfg = load_config("default").replace(
    device="cpu", max_steps=total, warmup_steps=max(1, total // 10), val_freq=10**6, checkpoint_freq=10**6
)
row = next(r for r in rows_for(torch.device("cpu")) if r.name == "+all")
spec = _spec(cfg, row, "muomni", warmup, steps)
spec["config"]["residual_dtype"] = variant
result = run_row(spec)
result["variant"] = variant
with open(out, "w") as f:
    json.dump(result, f)
median_ms = statistics.median(result["step_times"]) * 1e3
peak = result["peak_memory_bytes"] / 2**30
print(f"ROW cpu {variant} {result['tokens_per_s']:.0f} tok/s median ms {median_ms:.1f} peak GiB {peak:.2f} "
      f"val {result['val_loss']}", flush=True)  # fmt: skip
