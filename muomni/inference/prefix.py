"""Reusing the KV cache from one generation to the next: a prompt that starts with what the last generation
left in the cache runs only its new tokens through the model.

``muomni chat`` needs it: each turn's prompt is the whole conversation so far, and running it again costs a
turn the prefill of every earlier turn. The small preset in bf16 on a 2-core CPU, a 600-token conversation
and a 20-token message: 0.44-0.53 s to the first token run again, 0.04 s kept (docs/BENCHMARKS.md).
"""

from __future__ import annotations

from muomni.models.thinker import Thinker


class KVPrefix:
    """The token ids whose keys and values sit in slots 0..len(ids)-1 of the model's KV cache (batch row 0),
    as the last batch-1 generation given this object left them.

    Pass one instance to the successive :func:`~muomni.inference.generate.generate_tokens` calls of one
    model (``prefix=``): each runs only the part of its prompt after the longest prefix it shares with
    ``ids``, and the result is the cached decoding of the whole prompt. The model records the instance its
    cache serves (``Thinker.cache_owner``); a generation without it, a new cache, ``reset_kv_cache`` or the
    cache turned off clears that, and the next call runs its whole prompt. Direct ``model(tokens,
    input_pos)`` calls between two generations are not tracked: call :meth:`forget` after them.
    """

    def __init__(self) -> None:
        self.ids: list[int] = []

    def reusable(self, model: Thinker, prompt: list[int]) -> int:
        """How many leading tokens of ``prompt`` the cache holds already: the prefix it shares with ``ids``,
        all of the prompt but its last token at most (the prefill runs that one to sample from)."""
        if model.cache_owner is not self or not model.kv_cache_enabled:
            return 0
        shared = 0
        for held, wanted in zip(self.ids, prompt):
            if held != wanted:
                break
            shared += 1
        return min(shared, len(prompt) - 1)

    def forget(self) -> None:
        """Hold nothing: the next generation runs its whole prompt."""
        self.ids = []


__all__ = ["KVPrefix"]
