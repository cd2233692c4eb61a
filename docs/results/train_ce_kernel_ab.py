"""A preset's +all training row, each chunk's loss and gradient by the Triton kernel (new) or by Inductor's
compilation of PyTorch operations (old). argv: variant preset out.json ; run one variant per process."""

import json
import sys

import torch

from muomni.bench.train import _spec, rows_for
from muomni.bench.train_worker import run_row
from muomni.config import load_config
from muomni.training import chunked_ce

variant, preset, out = sys.argv[1:4]
if variant == "old":
    chunked_ce.CE_KERNEL_DEVICES = set()
row = [r for r in rows_for(torch.device("cuda")) if r.name == "+all"][0]
spec = _spec(load_config(preset), row, "muomni", 5, 30)
r = run_row(spec)
r["variant"], r["preset"] = variant, preset
with open(out, "w") as f:
    json.dump(r, f)
times = sorted(r["step_times"])
print(
    "ROW",
    preset,
    variant,
    round(r["tokens_per_s"]),
    "tok/s mfu",
    round((r["mfu"] or 0) * 100, 2),
    "median ms",
    round(times[len(times) // 2] * 1e3, 3),
    "peak GiB",
    round(r["peak_memory_bytes"] / 2**30, 2),
    "val",
    r["val_loss"],
    flush=True,
)
