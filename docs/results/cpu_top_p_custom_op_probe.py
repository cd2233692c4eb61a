"""Top-p in a compiled step on a CPU: Inductor's bisection against numpy's sorted values called as a custom op.

The whole ``sample`` compiled (fullgraph), temperature 0.8, top-p 0.9, by the inverse CDF; best of five
repeats of 200 calls; prints ms a call and whether both chose the same tokens.

    PYTHONPATH=. python docs/results/cpu_top_p_custom_op_probe.py
"""

import functools

import torch
from cpu_timing import best_ms

from muomni.inference import sampling
from muomni.inference.sampling import SamplingParams, row_uniforms, sample


@torch.library.custom_op("muomniprobe::top_p_by_sorted_values", mutates_args=())
def top_p_op(x: torch.Tensor, p: float) -> torch.Tensor:
    return sampling._top_p_by_sorted_values(x, p)


@top_p_op.register_fake
def _(x: torch.Tensor, p: float) -> torch.Tensor:
    return torch.empty_like(x)


ms = functools.partial(best_ms, calls=200, warmup=20)  # as these figures were timed


bisection = sampling._top_p_by_bisection
params = SamplingParams(0.8, 0, 0.9)
for vocab in (32000, 4096):
    for rows in (1, 16):
        logits = torch.randn(rows, vocab, generator=torch.Generator().manual_seed(rows)) * 3
        uniforms = row_uniforms((rows, vocab), torch.device("cpu"), torch.Generator().manual_seed(0))
        out = {}
        for name, rule in (("bisection", bisection), ("custom op", top_p_op)):
            sampling._top_p_by_bisection = rule  # what a compiled step calls
            torch._dynamo.reset()
            compiled = torch.compile(sample, fullgraph=True, dynamic=False)
            out[name] = (
                ms(lambda c=compiled, x=logits, u=uniforms: c(x, params, u)),
                compiled(logits, params, uniforms),
            )
        sampling._top_p_by_bisection = bisection
        same = torch.equal(out["bisection"][1], out["custom op"][1])
        print(f"vocab {vocab} rows {rows}: " + ", ".join(f"{k} {v[0]:.3f} ms" for k, v in out.items()), "same", same)
print("torch", torch.__version__, "threads", torch.get_num_threads())
