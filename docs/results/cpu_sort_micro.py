"""What top-p's sort costs on a CPU, alone: torch's sort with ids against numpy's sort of the values.

Best of five repeats of 100 calls each, eager, a vocabulary of 32,000; prints ms a call.

    PYTHONPATH=. python docs/results/cpu_sort_micro.py
"""

import functools

import numpy as np
import torch
from cpu_timing import best_ms

from muomni.inference.sampling import _top_p, _top_p_by_sorted_values

V = 32000


ms = functools.partial(best_ms, calls=100, warmup=10)  # as these figures were timed


def report(rows: int) -> None:
    x = torch.randn(rows, V, generator=torch.Generator().manual_seed(rows)) * 3
    print(
        f"rows {rows}: torch.sort with ids {ms(lambda: torch.sort(x, dim=-1, descending=True, stable=True)):.3f} ms,",
        end=" ",
    )
    print(f"np.sort of the values {ms(lambda: np.sort(x.numpy(), axis=-1)):.3f} ms,", end=" ")
    print(f"top-p 0.9 by torch's sort {ms(lambda: _top_p(x, 0.9)):.3f} ms,", end=" ")
    print(f"by the sorted values {ms(lambda: _top_p_by_sorted_values(x, 0.9)):.3f} ms")


report(1)
report(16)
print("torch", torch.__version__, "numpy", np.__version__, "threads", torch.get_num_threads())
