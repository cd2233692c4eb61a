"""The bench's ``+all`` training row of a preset through its row worker (5 warm-up, 30 timed steps), for
the A/B scripts of this folder, which patch what they compare and then call :func:`run`. Each variant runs
in a process of its own."""

import json
import statistics
from collections.abc import Callable
from typing import Any

import torch

from muomni.bench.train import _spec, rows_for
from muomni.bench.train_worker import run_row
from muomni.config import load_config


def run(variant: str, out: str, preset: str = "small", adjust: Callable[[dict[str, Any]], None] | None = None) -> None:
    """Run the row, write its raw result with ``variant`` and ``preset`` to ``out``, print one line.
    ``adjust`` may change the row's spec (its ``config``) first."""
    row = next(r for r in rows_for(torch.device("cuda")) if r.name == "+all")
    spec = _spec(load_config(preset), row, "muomni", 5, 30)
    if adjust is not None:
        adjust(spec)
    result = run_row(spec)
    result["variant"], result["preset"] = variant, preset
    with open(out, "w") as f:
        json.dump(result, f)
    median_ms = statistics.median(result["step_times"]) * 1e3
    mfu = (result["mfu"] or 0) * 100
    peak = result["peak_memory_bytes"] / 2**30
    print(f"ROW {preset} {variant} {result['tokens_per_s']:.0f} tok/s mfu {mfu:.2f} median ms {median_ms:.3f} "
          f"peak GiB {peak:.2f} val {result['val_loss']}", flush=True)  # fmt: skip
