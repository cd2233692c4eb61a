"""What drawing a token's noise costs on a CPU, alone: the race's exponentials against one uniform a row.

Best of five repeats of 300 calls each, eager, a vocabulary of 32,000; prints ms a call.

    PYTHONPATH=. python docs/results/cpu_noise_draw_micro.py
"""

import functools

import torch
from cpu_timing import best_ms

from muomni.inference.sampling import _inverse_cdf, race_noise, row_uniforms

V = 32000
CPU = torch.device("cpu")
gen = torch.Generator().manual_seed(0)


ms = functools.partial(best_ms, calls=300, warmup=20)  # as these figures were timed


def report(rows: int) -> None:
    logits = torch.randn(rows, V, generator=gen) * 3
    logits -= logits.amax(-1, keepdim=True)
    exps, uniforms = race_noise((rows, V), CPU, gen), row_uniforms((rows, V), CPU, gen)
    print(f"rows {rows}: exponentials {ms(lambda: race_noise((rows, V), CPU, gen)):.3f} ms,", end=" ")
    print(f"uniforms {ms(lambda: row_uniforms((rows, V), CPU, gen)):.4f} ms,", end=" ")
    print(f"race given its noise {ms(lambda: (logits - exps.log()).argmax(-1)):.3f} ms,", end=" ")
    print(f"inverse CDF given its uniform {ms(lambda: _inverse_cdf(logits, uniforms)):.3f} ms")


report(1)
report(16)
print("torch", torch.__version__, "threads", torch.get_num_threads())
