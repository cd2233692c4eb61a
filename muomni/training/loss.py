"""The language-modelling loss, in its own module so a chunked cross-entropy can replace it.

The loss functions are ``loss_fn(model, tokens) -> (sum_loss, n_tokens)``: the *sum* of the per-token
losses, not the mean, so gradient accumulation can divide by the target tokens of the whole accumulation
window and a batch of 8 x 1 gives the same update as 2 x 4. A chunked version (computing the head and
the cross-entropy a slice of rows at a time, so the ``[B, T, V]`` logits are never all alive) must keep
this signature: :func:`chunked_lm_loss` takes ``model.model`` (hidden states) and uses ``model.lm_head``.

The trainer runs the loss through :class:`LossModule`, whose ``forward(tokens)`` is the loss: DDP and
FSDP wrap that module, so the head the chunked loss reads directly is theirs too (wrapping the Thinker and
calling its backbone would bypass the wrapper's forward and leave the head unsynchronised or sharded).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from muomni.models.layers import Linear
from muomni.models.thinker import Thinker
from muomni.training.chunked_ce import chunked_linear_cross_entropy

LossFn = Callable[[nn.Module, torch.Tensor], tuple[torch.Tensor, int]]


def lm_loss(model: nn.Module, tokens: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Next-token cross-entropy of windows ``tokens`` [B, T+1].

    Args:
        model: maps tokens [B, T] to logits [B, T, V].
        tokens: packed windows; ``tokens[:, :-1]`` is the input and ``tokens[:, 1:]`` the target.

    Returns:
        ``(sum_loss, n_tokens)``: the summed loss in fp32 (a 0-d tensor) and the number of targets
        (``B * T``; windows are packed full, so no target is ignored).
    """
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    logits = model(inputs)  # [B, T, V]
    # fp32 log-softmax: in bf16/fp16 the sum over a large vocabulary loses the small probabilities.
    loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), reduction="sum")  # [B*T, V] -> ()
    return loss, targets.numel()


# The chunked loss kept out of a compiled caller's graph: the caller's graph ends at the hidden states and
# each chunk runs through its own compiled function (the fallback when the traced loss is not trusted).
_chunked_ce_outside_graph = torch.compiler.disable(chunked_linear_cross_entropy)


def chunked_lm_loss(
    backbone: nn.Module, tokens: torch.Tensor, head: nn.Linear, compiled: bool = False, in_graph: bool = True
) -> tuple[torch.Tensor, int]:
    """:func:`lm_loss` without the full logits: ``backbone`` gives hidden states, the head and the
    cross-entropy run a chunk of tokens at a time (:mod:`~muomni.training.chunked_ce`). ``in_graph=False``
    keeps the chunks out of a compiled caller's graph."""
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    hidden = backbone(inputs)  # [B, T, D]
    ce = chunked_linear_cross_entropy if in_graph else _chunked_ce_outside_graph
    weight = head.active_weight(hidden) if isinstance(head, Linear) else head.weight  # a bf16 copy, if any
    return ce(hidden, weight, targets, compiled=compiled), targets.numel()


class LossModule(nn.Module):
    """``tokens [B, T+1] -> (sum_loss, n_tokens)`` of a Thinker, as one module for DDP / FSDP to wrap.

    The Thinker is the only registered submodule. :meth:`use_compiled` compiles the whole loss, backbone,
    head and cross-entropy together: with chunked cross-entropy the chunk loop is traced into the same
    graph, so a step is one forward and one backward graph (and, in ``reduce-overhead`` mode, one CUDA
    graph each) instead of a graph per chunk with Python in between.

    Args:
        model: the Thinker.
        chunked: chunked linear cross-entropy (the backbone's hidden states and ``lm_head.weight``).
    """

    def __init__(self, model: Thinker, chunked: bool) -> None:
        super().__init__()
        self.thinker = model
        self.chunked = chunked
        self.compiled = False
        self.chunks_in_graph = True
        object.__setattr__(self, "loss", self.eager_loss)  # unregistered: a compiled wrapper is no submodule

    def eager_loss(self, tokens: torch.Tensor) -> tuple[torch.Tensor, int]:
        if self.chunked:
            # Outside a compiled graph (evaluation) each chunk still runs compiled when the loss is.
            head = self.thinker.lm_head
            return chunked_lm_loss(self.thinker.model, tokens, head, self.compiled, self.chunks_in_graph)
        return lm_loss(self.thinker, tokens)

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, int]:
        return self.loss(tokens)

    def use_compiled(self, mode: str | None, chunks_in_graph: bool = True) -> None:
        """Compile the loss with ``torch.compile`` in ``mode`` (None goes back to eager); with
        ``chunks_in_graph=False`` the chunked cross-entropy stays out of the graph."""
        self.compiled = mode is not None
        self.chunks_in_graph = chunks_in_graph
        object.__setattr__(self, "loss", self.eager_loss if mode is None else torch.compile(self.eager_loss, mode=mode))

    @contextmanager
    def eager(self) -> Iterator[None]:
        """The eager loss for a while (evaluation: its last, smaller batch would recompile the graph)."""
        loss = self.loss
        object.__setattr__(self, "loss", self.eager_loss)
        try:
            yield
        finally:
            object.__setattr__(self, "loss", loss)


def run_loss(module: nn.Module, tokens: torch.Tensor) -> tuple[torch.Tensor, int]:
    """The trainer's ``loss_fn``: a (possibly wrapped) :class:`LossModule` on ``tokens``."""
    return module(tokens)


__all__ = ["LossFn", "LossModule", "chunked_lm_loss", "lm_loss", "run_loss"]
