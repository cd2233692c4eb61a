"""Top-p in a compiled decode step on a CPU: the bisection against the sort, alternating in one process.

The bench's row (batch 1, compiled, temperature 0.8, top-p 0.9) twice each way, then the same without
top-p (temperature 0.8 only); prints tokens/s and ms a step.

    PYTHONPATH=. python docs/results/cpu_top_p_bisection_ab.py PRESET NEW_TOKENS
"""

import sys

import torch

from muomni.bench.infer import SAMPLED, TOP_P, _row
from muomni.config import load_config
from muomni.inference import sampling
from muomni.models.thinker import Thinker

preset = sys.argv[1]
new = int(sys.argv[2])
torch.manual_seed(0)
model = Thinker(load_config(preset)).eval()
bis = sampling._top_p_by_bisection
for _ in range(2):
    for name, fn in (("bisection", bis), ("sort", sampling._top_p)):
        sampling._top_p_by_bisection = fn
        model.__dict__.pop("_muomni_compiled_decode", None)
        torch._dynamo.reset()
        r = _row(model, f"{preset} top-p {name}", 1, new, compile=True, sampling=TOP_P)
        print(name, round(r["tokens_per_s_total"]), round(r["ms_per_step"], 3), flush=True)
    model.__dict__.pop("_muomni_compiled_decode", None)
    torch._dynamo.reset()
    r = _row(model, f"{preset} sampled", 1, new, compile=True, sampling=SAMPLED)
    print("sampled", round(r["tokens_per_s_total"]), round(r["ms_per_step"], 3), flush=True)
