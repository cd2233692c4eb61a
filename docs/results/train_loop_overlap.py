"""``muomni train`` on the tiny preset's +all keys for 100 steps, overlap_steps off, on, off, on (a process
each): loss curves, validations and final weights side by side, and the median tokens/s the loop logs
after its first 10 steps. The two runs without overlap give the spread of the GPU's own non-determinism
(cuDNN attention's backward). argv: out.json"""

import json
import statistics
import subprocess
import sys
from pathlib import Path

from safetensors.torch import load_file

KEYS = "use_amp=true amp_dtype=bf16 use_flash=true use_compile=true compile_mode=reduce-overhead chunked_ce=true"


def train(overlap: str, index: int) -> dict:
    run = Path(f"/tmp/loop_{overlap}_{index}")
    settings = (
        f"overlap_steps={overlap} max_steps=100 val_freq=25 checkpoint_freq=50 print_freq=1 save_dir={run} resume=never"
    )
    command = [sys.executable, "-m", "muomni", "train", "--config", "tiny", *KEYS.split(), *settings.split()]
    done = subprocess.run(command, capture_output=True, text=True)
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [m for m in metrics if "loss" in m]
    return {
        "rc": done.returncode,
        "stdout_tail": done.stdout[-600:],
        "stderr_tail": done.stderr[-600:],
        "losses": [m["loss"] for m in steps],
        "lrs": [m["lr"] for m in steps],
        "val": [m["val_loss"] for m in metrics if "val_loss" in m],
        "median_tokens_per_s_after_10": statistics.median(m["tokens_per_s"] for m in steps[10:]),
        "weights": str(sorted((run / "checkpoints").iterdir())[-1] / "model.safetensors"),
    }


def largest_relative_difference(a: dict, b: dict) -> float:
    return max(((a[k].float() - b[k].float()).norm() / b[k].float().norm()).item() for k in a)


runs = {f"{overlap}_{i}": train(overlap, i) for i, overlap in enumerate(("false", "true", "false", "true"))}
sync, overlapped, sync2 = (runs[k] for k in ("false_0", "true_1", "false_2"))
weights = {k: load_file(r.pop("weights")) for k, r in runs.items()}
result = {
    **runs,
    "weights_rel_sync_vs_overlap": largest_relative_difference(weights["true_1"], weights["false_0"]),
    "weights_rel_sync_vs_sync": largest_relative_difference(weights["false_2"], weights["false_0"]),
    "loss_maxdiff_sync_vs_overlap": max(abs(x - y) for x, y in zip(sync["losses"], overlapped["losses"])),
    "loss_maxdiff_sync_vs_sync": max(abs(x - y) for x, y in zip(sync["losses"], sync2["losses"])),
    "lrs_equal": sync["lrs"] == overlapped["lrs"],
}
print({k: v for k, v in result.items() if not isinstance(v, dict)})
with open(sys.argv[1], "w") as f:
    json.dump(result, f, indent=1)
