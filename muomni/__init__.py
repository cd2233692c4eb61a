"""muomni: the training and inference engine of the μOmni Thinker.

The public API::

    import muomni
    cfg = muomni.load_config("tiny", overrides={"batch_size": 8})
    muomni.Trainer(cfg).fit()
    model, tokenizer = muomni.load("runs/tiny")  # the tiny preset's save_dir
    texts = muomni.generate(model, tokenizer, ["def parse("], max_new_tokens=64, temperature=0.0)

Heavy modules (torch) are imported on first use, so ``muomni.load_config`` stays fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from muomni.config import Config, load_config

__version__ = "0.1.0"
__all__ = ["Config", "Thinker", "Trainer", "generate", "load", "load_config"]

_LAZY = {
    "Thinker": ("muomni.models.thinker", "Thinker"),
    "Trainer": ("muomni.training.trainer", "Trainer"),
    "generate": ("muomni.inference.generate", "generate"),
    "load": ("muomni.inference.loading", "load"),
}

if TYPE_CHECKING:
    from muomni.inference.generate import generate
    from muomni.inference.loading import load
    from muomni.models.thinker import Thinker
    from muomni.training.trainer import Trainer


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'muomni' has no attribute {name!r}")
