"""A Chrome trace's GPU kernels by name: time and launches per step, most time first.
argv: trace.json steps out.txt"""

import collections
import json
import sys

trace, steps, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
with open(trace) as f:
    events = json.load(f)["traceEvents"]
time_us, launches = collections.Counter(), collections.Counter()
for e in events:
    if e.get("cat") == "kernel":
        time_us[e["name"]] += e["dur"]
        launches[e["name"]] += 1
lines = [
    f"all kernels {sum(time_us.values()) / steps / 1e3:.3f} ms a step, {sum(launches.values()) / steps:.0f} launches"
]
for name, us in time_us.most_common():
    n = launches[name]
    lines.append(f"{us / steps:9.1f} us  {n / steps:6.1f}x  {us / n:8.1f} us each  {name[:160]}")
with open(out, "w") as f:
    f.write("\n".join(lines) + "\n")
print("\n".join(lines[:60]))
