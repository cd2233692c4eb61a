"""What one generation cost: token counts and timings, filled in by :func:`muomni.generate` when asked."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch


@dataclass
class GenerationStats:
    """Counts and timings of one call to ``generate``; pass an instance as ``stats=`` to have it filled in.

    Times are measured with the device synchronized. ``compile_s`` is the warm-up that compiled (and, on
    CUDA, captured) the decode step; it is not part of ``total_s``, and is None when nothing was compiled.
    """

    rows: int = 0
    prompt_tokens: int = 0
    cached_prompt_tokens: int = 0  # of prompt_tokens, those a kept prefix had in the cache (not run again)
    generated_tokens: int = 0
    time_to_first_token_s: float = 0.0
    total_s: float = 0.0
    compile_s: float | None = None

    @property
    def decode_s(self) -> float:
        """Time after the first token (of every row) was known."""
        return max(self.total_s - self.time_to_first_token_s, 0.0)

    @property
    def decode_tokens_per_s(self) -> float:
        """Tokens per second of the decode loop alone: every token but each row's first, over ``decode_s``."""
        decoded = self.generated_tokens - self.rows
        return decoded / self.decode_s if self.decode_s > 0 and decoded > 0 else 0.0

    @property
    def overall_tokens_per_s(self) -> float:
        """Generated tokens over the whole time, prefill included."""
        return self.generated_tokens / self.total_s if self.total_s > 0 else 0.0

    def format(self) -> str:
        """One line for the terminal."""
        parts = [
            f"prompt tokens {self.prompt_tokens}"
            + (f" ({self.cached_prompt_tokens} from the cache)" if self.cached_prompt_tokens else ""),
            f"generated tokens {self.generated_tokens}",
            f"time to first token {self.time_to_first_token_s * 1e3:.1f} ms",
            # One token a row is all prefill: no decode step ran, and a rate of 0.0 would say it was slow.
            f"decode {self.decode_tokens_per_s:,.1f} tok/s" if self.generated_tokens > self.rows else "decode n/a",
            f"overall {self.overall_tokens_per_s:,.1f} tok/s",
        ]
        if self.compile_s is not None:
            parts.append(f"compile {self.compile_s:.1f} s")
        return "[stats] " + ", ".join(parts)


def synced_time(device: torch.device) -> float:
    """``time.perf_counter()`` after the device has finished the work queued so far."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()
