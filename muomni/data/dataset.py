"""Token data for training: the corpus's tokens split by document, and a sampler of training windows.

The tokens come from the cache of :mod:`~muomni.data.token_cache` (tokenized once, then memory-mapped).
Training and validation split by *document*, then each side is packed (concatenated) and cut into
windows of ``ctx_len + 1`` tokens: ``window[:-1]`` is the input, ``window[1:]`` the target.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from muomni.data.token_cache import read_token_cache, token_cache_paths, write_token_cache
from muomni.data.tokenizer import Tokenizer
from muomni.errors import DataError


def _pack(tokens: np.ndarray, offsets: np.ndarray, doc_ids: np.ndarray) -> np.ndarray:
    """The tokens of ``doc_ids`` (sorted) concatenated; a view when they are all the documents."""
    if len(doc_ids) == len(offsets) - 1:
        return tokens
    if len(doc_ids) == 0:
        return np.empty(0, dtype=tokens.dtype)
    starts, ends = offsets[doc_ids], offsets[doc_ids + 1]
    # Neighbouring documents are contiguous in the file: copy runs of them, not one slice per document.
    breaks = np.flatnonzero(starts[1:] != ends[:-1]) + 1
    run_starts = starts[np.concatenate(([0], breaks))]
    run_ends = ends[np.concatenate((breaks - 1, [len(doc_ids) - 1]))]
    return np.concatenate([tokens[s:e] for s, e in zip(run_starts, run_ends, strict=True)])


def split_documents(n_docs: int, val_split: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Pick validation documents by a seeded permutation.

    Args:
        n_docs: the number of documents.
        val_split: the share of documents for validation; 0 for none.
        seed: the permutation's seed (``numpy.random.default_rng(seed)``).

    Returns:
        ``(val_ids, train_ids)``, each sorted so documents keep their corpus order. With
        ``val_split > 0`` there is at least one validation and one training document.
    """
    if val_split <= 0 or n_docs < 2:
        return np.empty(0, dtype=np.int64), np.arange(n_docs, dtype=np.int64)
    n_val = min(max(1, round(val_split * n_docs)), n_docs - 1)
    order = np.random.default_rng(seed).permutation(n_docs)
    return np.sort(order[:n_val]), np.sort(order[n_val:])


def _check_args(ctx_len: int, val_split: float) -> None:
    if ctx_len < 1:
        raise DataError(f"ctx_len {ctx_len} is invalid; it must be at least 1")
    if not 0.0 <= val_split < 1.0:
        raise DataError(f"val_split {val_split} is invalid; it must be in [0, 1)")


class TokenData:
    """A tokenized corpus, split by document into packed training and validation token streams.

    Build it with :meth:`build`. Window ``i`` of a split is ``tokens[i*ctx_len : i*ctx_len + ctx_len + 1]``
    (consecutive windows share one token, so every token but the first is a target once).

    Attributes:
        train_tokens, val_tokens: 1-D arrays of token ids (memory-mapped or in memory).
        train_docs, val_docs: the sorted document indices of each split.
        ctx_len: tokens of input per window.
        path: the cache file the tokens come from (None when built from arrays).
        reused: True when the tokens were read from the cache rather than tokenized now.
    """

    def __init__(
        self,
        tokens: np.ndarray,
        offsets: np.ndarray,
        ctx_len: int,
        val_split: float,
        seed: int,
        source: str = "corpus",
        path: Path | None = None,
        reused: bool = False,
    ) -> None:
        _check_args(ctx_len, val_split)
        self.ctx_len, self.val_split, self.seed, self.source = ctx_len, val_split, seed, source
        self.path, self.reused = path, reused
        self.offsets = np.asarray(offsets, dtype=np.int64)
        if val_split > 0 and self.n_docs == 1:
            raise DataError(
                f"corpus {source} has one document and val_split is {val_split}: a single document cannot be "
                "split by document; give more documents or set val_split 0"
            )
        self.val_docs, self.train_docs = split_documents(self.n_docs, val_split, seed)
        self.train_tokens = _pack(tokens, self.offsets, self.train_docs)
        self.val_tokens = _pack(tokens, self.offsets, self.val_docs)
        self._check_sizes()

    @classmethod
    def build(
        cls,
        source: str,
        tokenizer: Tokenizer,
        ctx_len: int,
        val_split: float,
        seed: int,
        documents: Sequence[str] | None = None,
    ) -> TokenData:
        """Tokenize a corpus (or reuse its cached tokens) and split it.

        Args:
            source: the corpus, as for :func:`~muomni.data.corpus.load_documents`.
            tokenizer: the tokenizer; ``<eos>`` is appended after every document.
            ctx_len: tokens of input per window (a window holds ``ctx_len + 1``).
            val_split: the share of documents held out for validation; 0 for none.
            seed: the seed of the document split.
            documents: the corpus's documents if already loaded (only read on a cache miss otherwise).

        Raises:
            DataError: a bad corpus, a corpus too small for one window of each split, or a
                single-document corpus with ``val_split > 0``.
        """
        _check_args(ctx_len, val_split)
        bin_path, meta_path = token_cache_paths(source, tokenizer)
        cached = read_token_cache(bin_path, meta_path, tokenizer)
        reused = cached is not None
        if cached is None:
            cached = write_token_cache(source, tokenizer, documents, bin_path, meta_path)
        tokens, offsets = cached
        return cls(tokens, offsets, ctx_len, val_split, seed, source=source, path=bin_path, reused=reused)

    def _check_sizes(self) -> None:
        need = self.ctx_len + 1
        n_train = len(self.train_tokens)
        if n_train < need:
            held = "its training documents hold" if len(self.val_docs) else "it holds"
            raise DataError(
                f"corpus {self.source} is too small: {held} {n_train} tokens but one window needs "
                f"ctx_len + 1 = {need}; use a smaller ctx_len or more text"
            )
        if len(self.val_docs) and len(self.val_tokens) < need:
            raise DataError(
                f"the validation documents of {self.source} hold {len(self.val_tokens)} tokens but one window "
                f"needs ctx_len + 1 = {need}; use a larger val_split or a smaller ctx_len"
            )

    @property
    def n_docs(self) -> int:
        return len(self.offsets) - 1

    @property
    def n_train_windows(self) -> int:
        return max(0, (len(self.train_tokens) - 1) // self.ctx_len)

    @property
    def n_val_windows(self) -> int:
        return max(0, (len(self.val_tokens) - 1) // self.ctx_len)

    def _windows(self, tokens: np.ndarray, indices: np.ndarray, n_windows: int) -> torch.Tensor:
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= n_windows):
            raise IndexError(f"window index out of range [0, {n_windows})")
        positions = idx[:, None] * self.ctx_len + np.arange(self.ctx_len + 1)
        return torch.from_numpy(np.asarray(tokens[positions], dtype=np.int64))

    def train_batch(self, indices: np.ndarray) -> torch.Tensor:
        """Training windows ``indices`` as a LongTensor ``[len(indices), ctx_len + 1]``."""
        return self._windows(self.train_tokens, indices, self.n_train_windows)

    def val_windows(self, max_windows: int) -> torch.Tensor:
        """The first ``min(max_windows, n_val_windows)`` validation windows: a fixed validation set.

        Returns:
            A LongTensor ``[N, ctx_len + 1]`` (``N`` is 0 without validation documents).
        """
        n = max(0, min(max_windows, self.n_val_windows))
        return self._windows(self.val_tokens, np.arange(n), self.n_val_windows)

    def __repr__(self) -> str:
        return (
            f"TokenData({self.source}: {self.n_docs} documents, {len(self.train_tokens)} train / "
            f"{len(self.val_tokens)} val tokens, {self.n_train_windows} / {self.n_val_windows} windows of "
            f"{self.ctx_len}+1)"
        )


class WindowStream:
    """An endless, deterministic and resumable stream of training window indices.

    Epoch ``e`` is one permutation of ``range(n_windows)`` drawn from ``default_rng([seed, e])``;
    epochs follow one another seamlessly, so ``take(8)`` twice equals ``take(16)`` once.

    Args:
        n_windows: the number of windows (:attr:`TokenData.n_train_windows`).
        seed: the stream's seed.

    Attributes:
        epoch: completed epochs (the epoch of the next index).
        position: the offset of the next index within its epoch.
    """

    def __init__(self, n_windows: int, seed: int) -> None:
        if n_windows < 1:
            raise ValueError(f"WindowStream needs at least one window, got {n_windows}")
        self.n_windows, self.seed = int(n_windows), int(seed)
        self.epoch, self.position = 0, 0
        self._perm_epoch = -1
        self._perm = np.empty(0, dtype=np.int64)

    def _permutation(self) -> np.ndarray:
        # Drawing a permutation is O(n_windows): do it once per epoch, not once per take.
        if self._perm_epoch != self.epoch:
            self._perm = np.random.default_rng([self.seed, self.epoch]).permutation(self.n_windows)
            self._perm_epoch = self.epoch
        return self._perm

    def take(self, n: int) -> np.ndarray:
        """The next ``n`` window indices (int64), crossing into the next epoch when needed."""
        parts = [np.empty(0, dtype=np.int64)]
        while n > 0:
            k = min(n, self.n_windows - self.position)
            parts.append(self._permutation()[self.position : self.position + k])
            self.position += k
            n -= k
            if self.position == self.n_windows:
                self.epoch, self.position = self.epoch + 1, 0
        return np.concatenate(parts).astype(np.int64, copy=False)

    def state_dict(self) -> dict[str, int]:
        """The stream's state: JSON-serialisable ints."""
        return {"n_windows": self.n_windows, "seed": self.seed, "epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a :meth:`state_dict`.

        Raises:
            DataError: the state is for a different number of windows or seed (the data or the
                config changed since it was saved), or is malformed.
        """
        try:
            n_windows, seed, epoch, position = (int(state[k]) for k in ("n_windows", "seed", "epoch", "position"))
        except (KeyError, TypeError, ValueError):
            raise DataError(f"sampler state {state!r} is malformed; resume from an intact checkpoint") from None
        if (n_windows, seed) != (self.n_windows, self.seed):
            raise DataError(
                f"sampler state is for {n_windows} windows with seed {seed} but the data has {self.n_windows} "
                f"with seed {self.seed}; resume with the same corpus, tokenizer, ctx_len, val_split and seed"
            )
        if epoch < 0 or not 0 <= position < n_windows:
            raise DataError(f"sampler state {state!r} is out of range; resume from an intact checkpoint")
        self.epoch, self.position = epoch, position


__all__ = ["TokenData", "WindowStream", "split_documents"]
