"""Small +all training row, the stats read after the optimizer's launch (old) or copied out before (new).
argv: variant out.json ; run one variant per process."""

import json
import sys

import torch

import muomni.training.trainer as tr
from muomni.bench.train import _spec, rows_for
from muomni.bench.train_worker import run_row
from muomni.config import load_config

variant, out = sys.argv[1], sys.argv[2]
if variant == "old":
    tr.copy_to_host = lambda values: values.tolist  # read when called: after the update is queued
row = [r for r in rows_for(torch.device("cuda")) if r.name == "+all"][0]
spec = _spec(load_config("small"), row, "muomni", 5, 30)
r = run_row(spec)
r["variant"] = variant
with open(out, "w") as f:
    json.dump(r, f)
print(
    "ROW",
    variant,
    round(r["tokens_per_s"]),
    "tok/s mfu",
    round(r["mfu"] * 100, 2),
    "median ms",
    round(sorted(r["step_times"])[15] * 1e3, 2),
    "peak GiB",
    round(r["peak_memory_bytes"] / 2**30, 2),
    "val",
    r["val_loss"],
    flush=True,
)
