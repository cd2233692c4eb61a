"""What each kernel adds to a compiled decode step, batch 1 against batch 16, from a profiled generation.

    PYTHONPATH=. python3 docs/results/decode_step_increments.py PRESET OUT.json [BATCHES]

With PDL a kernel starts while the one before it runs and waits inside, so its duration in the trace
says little. What it adds is its end past the latest end before it: kernels in order of start, each one's
``increment`` = end - max(the ends before), split into ``idle`` (the device ran nothing since that end) and
``busy`` (the rest). The increments of a generation add up to its device time from the first kernel to
the last; per step = over the decoded steps. Kernel names lose Triton's and CUTLASS's suffixes.
"""

import collections
import json
import re
import sys

import torch
from torch.profiler import ProfilerActivity, profile

from muomni.bench.infer import decode
from muomni.config import load_config
from muomni.models.thinker import Thinker

NEW = 64


def _short(name: str) -> str:
    name = re.sub(r"_\d+d\d*(_\w+)?$", "", name)  # Triton's specialization suffixes
    return name[:70]


def increments(batch: int, model: Thinker) -> dict:
    decode(model, batch, 200, True, True, torch.inference_mode)  # compile, capture, warm
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        decode(model, batch, NEW, True, True, torch.inference_mode)
        torch.cuda.synchronize()
    kernels = sorted(
        (e.time_range.start, e.time_range.end, e.name)
        for e in prof.events()
        if e.device_type == torch.autograd.DeviceType.CUDA
    )
    busy, idle, count = collections.Counter(), collections.Counter(), collections.Counter()
    last_end = kernels[0][0]
    for start, end, name in kernels:
        key = _short(name)
        count[key] += 1
        if end <= last_end:
            continue
        idle[key] += max(0.0, start - last_end)
        busy[key] += end - max(start, last_end)
        last_end = end
    steps = NEW - 1
    total = (last_end - kernels[0][0]) / steps
    rows = sorted(busy, key=lambda k: -(busy[k] + idle[k]))
    table = [
        {"kernel": k, "launches_per_step": count[k] / steps, "busy_us": busy[k] / steps, "idle_us": idle[k] / steps}
        for k in rows
    ]
    return {"batch": batch, "us_per_step": total, "kernels_per_step": len(kernels) / steps, "kernels": table}


def main(preset: str, out_path: str, batches: list[int]) -> None:
    cfg = load_config(preset)
    torch.manual_seed(cfg.seed)
    model = Thinker(cfg).to("cuda").eval().to(torch.bfloat16)
    results = {"preset": preset, "torch": torch.__version__, "gpu": torch.cuda.get_device_name(), "runs": []}
    for batch in batches:
        run = increments(batch, model)
        results["runs"].append(run)
        print(f"{preset} batch {batch}: {run['us_per_step']:.1f} us a step, {run['kernels_per_step']:.1f} kernels")
        for r in run["kernels"][:25]:
            print(f"  {r['busy_us']:6.2f} busy {r['idle_us']:5.2f} idle  {r['launches_per_step']:4.1f}x  {r['kernel']}")
        with open(out_path, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], [int(b) for b in (sys.argv[3] if len(sys.argv) > 3 else "1,16").split(",")])
