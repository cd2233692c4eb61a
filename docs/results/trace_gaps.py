"""Idle gaps on the device in a Chrome trace: which kernel ends before each gap and which starts after it,
and which host runtime calls run while the device idles. argv: trace.json steps"""

import collections
import json
import sys

trace, steps = sys.argv[1], int(sys.argv[2])
with open(trace) as f:
    events = json.load(f)["traceEvents"]
device = sorted(
    (e for e in events if e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset") and e.get("dur") is not None),
    key=lambda e: e["ts"],
)
runtime = [e for e in events if e.get("cat") == "cuda_runtime"]
print("device events", len(device), "runtime events", len(runtime))
gaps, reached, before = [], None, None
for e in device:
    if reached is not None and e["ts"] > reached:
        gaps.append((e["ts"] - reached, reached, before["name"], e["name"]))
    end = e["ts"] + e["dur"]
    if reached is None or end > reached:
        reached, before = end, e
print(f"idle {sum(g[0] for g in gaps) / steps / 1e3:.3f} ms a step in {len(gaps) / steps:.0f} gaps a step")
for lo, hi in ((0, 2), (2, 5), (5, 20), (20, 100), (100, float("inf"))):
    chosen = [g for g in gaps if lo <= g[0] < hi]
    idle_ms = sum(g[0] for g in chosen) / steps / 1e3
    print(f"  gaps {lo}-{hi} us: {len(chosen) / steps:.1f} a step, {idle_ms:.3f} ms a step")
kinds = collections.defaultdict(lambda: [0, 0.0])
for us, _, a, b in gaps:
    if us >= 2:
        kinds[(a[:60], b[:60])][0] += 1
        kinds[(a[:60], b[:60])][1] += us
print("largest gap kinds (>= 2 us): count/step, us/step, before -> after")
for (a, b), (n, us) in sorted(kinds.items(), key=lambda kv: -kv[1][1])[:25]:
    print(f"  {n / steps:5.1f} {us / steps:8.1f}  {a} -> {b}")
print("host runtime calls overlapping the 15 largest gaps:")
for us, start, a, b in sorted(gaps, reverse=True)[:15]:
    over = [r for r in runtime if r["ts"] < start + us and r["ts"] + r.get("dur", 0) > start]
    names = dict(collections.Counter(r["name"] for r in over).most_common(4))
    longest = max(over, key=lambda r: r.get("dur", 0)) if over else None
    tail = f" longest {longest['name']} {longest['dur']:.0f} us" if longest else ""
    print(f"  {us:8.1f} us after {a[:50]} before {b[:50]}: {names}{tail}")
