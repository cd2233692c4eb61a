"""Inference: load a checkpoint, generate text (batched, cached, optionally compiled), chat.

``load`` (loading.py) -> ``generate`` / ``generate_tokens`` (generate.py), built from ``prefill`` and the
decoders (decode.py), ``sample`` (sampling.py), ``TextStream`` (streaming.py) and ``GenerationStats``
(stats.py); ``chat.py`` and ``commands.py`` are the ``muomni chat`` and ``muomni generate`` commands.
"""

from muomni.inference.generate import generate, generate_tokens
from muomni.inference.loading import load
from muomni.inference.sampling import SamplingParams
from muomni.inference.stats import GenerationStats

__all__ = ["GenerationStats", "SamplingParams", "generate", "generate_tokens", "load"]
