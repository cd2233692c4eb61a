"""(Runs on commit da53c12, where muomni.models.layers.side_by_side exists; the change was reverted after this A/B.)
Small +all training row, q/k/v and gate/up as one product each over their weights side by side (new) or
as separate products (old). argv: variant out.json ; run one variant per process."""

import json
import sys

import torch

from muomni.bench.train import _spec, rows_for
from muomni.bench.train_worker import run_row
from muomni.config import load_config
from muomni.models import layers

variant, out = sys.argv[1], sys.argv[2]
if variant == "old":
    layers.side_by_side = lambda x, linears: tuple(linear(x) for linear in linears)
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
