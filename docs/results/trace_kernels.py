"""Summarize a Chrome trace's GPU kernels by name: per-step time and count. argv: trace.json steps out.txt"""
import json, sys, collections
trace, steps, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
ev = json.load(open(trace))["traceEvents"]
tot, cnt = collections.Counter(), collections.Counter()
for e in ev:
    if e.get("cat") == "kernel":
        tot[e["name"]] += e["dur"]; cnt[e["name"]] += 1
with open(out, "w") as f:
    s = sum(tot.values()) / steps
    f.write(f"all kernels {s/1e3:.3f} ms a step, {sum(cnt.values())/steps:.0f} launches\n")
    for n, t in tot.most_common():
        f.write(f"{t/steps:9.1f} us  {cnt[n]/steps:6.1f}x  {t/cnt[n]:8.1f} us each  {n[:160]}\n")
print(open(out).read()[:6000])
