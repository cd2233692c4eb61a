"""Where a run starts from: the device, the seed, and the config, tokenizer and weights to begin with.

A run starts from a resumed checkpoint (its config's model keys, its tokenizer, and a global batch that
must stay the same, see :func:`~muomni.training.resume.check_global_batch`), from ``init_from`` (a
muomni checkpoint's or a Hugging Face model's weights), or from scratch (a tokenizer trained on the corpus,
or read from the cache).
"""

from __future__ import annotations

import random
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from muomni.config import Config
from muomni.data import Tokenizer, prepare_tokenizer
from muomni.errors import CheckpointError, ConfigError, UserError
from muomni.paths import HF_PREFIX
from muomni.training.checkpoint import INFERENCE_FILES, MODEL_FILE, TOKENIZER_FILE, load_tensors, resolve_checkpoint
from muomni.training.resume import check_compatible, check_global_batch
from muomni.training.snapshot import (
    DATA_KEYS,
    MODEL_KEYS,
    model_keys,
    read_config,
    saved_asked_split,
    saved_world_size,
    split_of,
)

Sources = tuple[Config, Tokenizer, dict[str, torch.Tensor] | None]


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU. Raises ConfigError for ``cuda`` without a GPU."""
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("config key 'device': cuda was asked for but no CUDA GPU is available; use device=cpu")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # seeds every CUDA device too


def adopt_fitted_split(old: Config, cfg: Config, asked: dict[str, Any] | None) -> Config:
    """On resume, keep the checkpoint's micro-batch split and memory savers where auto_fit chose them.

    They are kept when this run is asked for what the checkpoint's run was asked for (``asked``, its split
    before auto_fit), with the same effective batch: auto_fit would only find them again, one out-of-memory
    step at a time. A split asked anew, such as a smaller micro-batch to fit another device, is the user's.
    Checkpoints older than ``asked`` keep theirs whenever the micro-batch differs.
    """
    if old.effective_batch_size != cfg.effective_batch_size:
        return cfg
    if (asked is None and old.batch_size == cfg.batch_size) or (asked is not None and split_of(cfg) != asked):
        return cfg
    return cfg.replace(**split_of(old))


def resume_sources(cfg: Config, ckpt: Path, world_size: int) -> Sources:
    """The config and tokenizer of a resumed run, after checking it may continue from ``ckpt``."""
    old = read_config(ckpt)
    if cfg.init_from is not None:  # the model keys came from init_from when the run started
        _check_same_init(old, cfg, ckpt)
        cfg = cfg.replace(**model_keys(old))
    old_world = saved_world_size(ckpt)
    if old_world == world_size:
        cfg = adopt_fitted_split(old, cfg, saved_asked_split(ckpt))
    check_compatible(old, cfg, ckpt, MODEL_KEYS)
    check_global_batch(old, old_world, cfg, world_size, ckpt)
    check_compatible(old, cfg, ckpt, list(DATA_KEYS))
    return cfg, Tokenizer.load(ckpt / TOKENIZER_FILE), None


def _check_same_init(old: Config, cfg: Config, ckpt: Path) -> None:
    """A resumed run continues from its checkpoint's weights: another ``init_from`` than the run began with
    would be dropped without a word. The same folder written another way (``./run``, an absolute path) is
    the same."""
    if old.init_from is not None and _source_path(old.init_from) == _source_path(cfg.init_from):
        return
    began, resume = (
        (f"from init_from={old.init_from}", f"give init_from={old.init_from}")
        if old.init_from
        else ("from scratch", "leave init_from out")
    )
    raise CheckpointError(
        f"cannot resume from {ckpt}: that run began {began}, and init_from={cfg.init_from} is given now; "
        f"{resume} to resume it, or use a new save_dir to start from {cfg.init_from}"
    )


def _source_path(init_from: str) -> tuple[bool, Path]:
    return init_from.startswith(HF_PREFIX), Path(init_from.removeprefix(HF_PREFIX)).expanduser().resolve()


def initial_sources(cfg: Config) -> Sources:
    """The config, tokenizer and initial weights of a new run: ``init_from`` or scratch."""
    if cfg.init_from is None:
        tokenizer = prepare_tokenizer(cfg.train_text, cfg.vocab_size)
        if tokenizer.vocab_size < cfg.vocab_size // 2:  # the rows past it are trained toward never being picked
            warnings.warn(
                f"the tokenizer learned {tokenizer.vocab_size:,} tokens from this corpus, far fewer than vocab_size "
                f"{cfg.vocab_size:,}: the model's other embedding and output rows stand for no token; "
                f"vocab_size={tokenizer.vocab_size} fits this corpus",
                stacklevel=2,
            )
        return cfg, tokenizer, None
    if cfg.init_from.startswith(HF_PREFIX):
        try:
            from muomni.hf import load_for_training
        except ModuleNotFoundError:
            raise UserError("init_from hf: is not yet available in this version")
        init = load_for_training(cfg.init_from, cfg)
        _warn_past_positions(cfg, _init_keys(cfg.init_from)["ctx_len"], "max_position_embeddings")
        return cfg.replace(**init.overrides), init.tokenizer, init.state
    ckpt = _init_checkpoint(cfg.init_from)
    keys = model_keys(read_config(ckpt))
    _warn_past_positions(cfg, keys["ctx_len"], "ctx_len")
    return cfg.replace(**_shape_from(keys)), Tokenizer.load(ckpt / TOKENIZER_FILE), load_tensors(ckpt / MODEL_FILE)


def _warn_past_positions(cfg: Config, trained: int, key: str) -> None:
    """``ctx_len`` stays the user's with ``init_from`` (it sets the window and the RoPE table, not a weight),
    even past the positions the source was trained for (its ``key``): RoPE computes them, but the model
    starts untrained there."""
    if cfg.ctx_len > trained:
        warnings.warn(
            f"ctx_len {cfg.ctx_len} is past init_from={cfg.init_from}'s {key} {trained}: RoPE runs there, but "
            f"the model was not trained past {trained} positions; ctx_len={trained} stays within them",
            stacklevel=3,
        )


def refuse_shape_overrides(cfg: Config, explicit: list[str]) -> None:
    """With ``init_from`` (a muomni checkpoint or ``hf:FOLDER``), the model's shape is the source's
    (``ctx_len`` aside): a model key set on the command line (``explicit``) that disagrees would be dropped
    without a word.

    Raises:
        ConfigError: naming the key, both values, and the way out.
    """
    if cfg.init_from is None or not set(explicit) & set(MODEL_KEYS):
        return
    for key, value in _init_shape(cfg.init_from).items():
        if key in explicit and getattr(cfg, key) != value:
            raise ConfigError(
                f"config key '{key}': {getattr(cfg, key)!r} was given, but init_from={cfg.init_from} has "
                f"{value!r} and the model keeps its shape; leave {key} out, or train from scratch without init_from"
            )


def _init_shape(init_from: str) -> dict[str, object]:
    """The model keys a run started ``init_from`` a muomni checkpoint or a Hugging Face folder takes from it."""
    return _shape_from(_init_keys(init_from))


def _init_keys(init_from: str) -> dict[str, Any]:
    """The model keys of a muomni checkpoint or a Hugging Face folder (its ``ctx_len``: the positions it
    was trained for)."""
    if not init_from.startswith(HF_PREFIX):
        return model_keys(read_config(_init_checkpoint(init_from)))
    from muomni.hf.importer import hf_folder, read_hf_config
    from muomni.hf.mapping import model_keys_from_hf

    folder = hf_folder(init_from)
    return model_keys_from_hf(read_hf_config(folder), str(folder))


def _init_checkpoint(path: str) -> Path:
    """The checkpoint ``init_from`` names; only the files a start from it reads are checked (a model shared
    without its optimizer state starts a run too)."""
    try:
        return resolve_checkpoint(path, files=INFERENCE_FILES)
    except CheckpointError as e:
        raise CheckpointError(f"config key 'init_from': {e}")


def _shape_from(keys: dict[str, object]) -> dict[str, object]:
    """Of a source's model keys, those a run started ``init_from`` it takes: all but ``ctx_len``."""
    return {k: v for k, v in keys.items() if k != "ctx_len"}


__all__ = [
    "adopt_fitted_split",
    "initial_sources",
    "refuse_shape_overrides",
    "resolve_device",
    "resume_sources",
    "seed_everything",
]
