"""Small +all training row through the bench's row worker, one variant per process.

argv: VARIANT out.json. "base": the row as the bench runs it; "gqa": SDPA given the grouped key/value heads
as they are (``enable_gqa``) instead of copies per query head, whatever the dtype and device (since then
the model does this where the fused kernels take it); "maxauto": ``compile_mode=max-autotune`` in place
of the row's reduce-overhead.
"""

import json
import sys

import torch
import torch.nn.functional as F

import muomni.models.layers as layers
from muomni.bench.train import _spec, rows_for
from muomni.bench.train_worker import run_row
from muomni.config import load_config

variant, out = sys.argv[1], sys.argv[2]
row = [r for r in rows_for(torch.device("cuda")) if r.name == "+all"][0]
if variant == "gqa":
    plain = layers.sdpa_attention

    def sdpa_gqa(q, k, v, mask, dropout_p):  # noqa: ANN001, ANN202
        if mask is not None:
            return plain(q, k, v, mask, dropout_p)
        groups = q.shape[1] != k.shape[1]
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True, enable_gqa=groups)

    layers.sdpa_attention = sdpa_gqa  # read by each Attention module when it is built
spec = _spec(load_config("small"), row, "muomni", 5, 30)
if variant == "maxauto":
    spec["config"]["compile_mode"] = "max-autotune"
r = run_row(spec)
r["variant"] = variant
with open(out, "w") as f:
    json.dump(r, f)
median_ms = round(sorted(r["step_times"])[15] * 1e3, 2)
peak = round(r["peak_memory_bytes"] / 2**30, 2)
print("ROW", variant, round(r["tokens_per_s"]), "tok/s mfu", round(r["mfu"] * 100, 2), "median ms", median_ms,
      "peak GiB", peak, "val", r["val_loss"], flush=True)  # fmt: skip
