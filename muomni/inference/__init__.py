"""Inference: load a checkpoint, generate text (batched, cached, optionally compiled), chat.

``load`` (loading.py) -> ``generate`` / ``generate_tokens`` (generate.py), built from ``prefill`` and the
decoders (decode.py), ``sample`` (sampling.py), ``TextStream`` (streaming.py) and ``GenerationStats``
(stats.py); ``chat.py`` and ``commands.py`` are the ``muomni chat`` and ``muomni generate`` commands.
The public entry points are ``muomni.load`` and ``muomni.generate``. Nothing is re-exported here, so
``muomni.inference.generate`` stays the module, not the function of the same name.
"""
