"""The timing the CPU micro scripts beside this file share: best of five repeats, after a warm-up.

Imported as ``from cpu_timing import best_ms`` (a script's own folder is on its path when run as
``python docs/results/SCRIPT.py``).
"""

import time
from collections.abc import Callable


def best_ms(fn: Callable[[], object], calls: int, warmup: int) -> float:
    """Milliseconds a call of ``fn``: ``warmup`` calls untimed, then the best of five repeats of ``calls``."""
    for _ in range(warmup):
        fn()
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - start) / calls)
    return 1e3 * best
