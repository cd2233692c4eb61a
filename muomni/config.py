"""Typed, validated configuration: JSON file or preset -> :class:`Config` -> ``key=value`` overrides.

The keys are μOmni's own flat keys (so a μOmni ``thinker_tiny.json`` loads unchanged) plus muomni's.
Every value is checked when the config is built, before any data or model work, and a bad one raises
:class:`~muomni.errors.ConfigError` with one line that names the key and the value.

This module does not import torch: the command line validates a config in milliseconds.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import types
import typing
import warnings
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

from muomni.config_files import PRESETS, overrides_dict, parse_override, preset_path, source_dict
from muomni.errors import ConfigError

# Keys that μOmni configs carry and muomni accepts but does not use (a warning says so, once per key).
IGNORED_KEYS = {
    "num_workers": "tokens are read from a memory-mapped file in the training process",
    "shuffle_buffer_size": "windows are shuffled by a full per-epoch permutation",
    "drop_last": "windows are packed full and batches run on across epochs, so there is no partial batch",
}

# Upper bounds past which a value is certainly a mistake. Each fails here, naming the key, rather than as an
# allocation that aborts the process (the Rust tokenizer trainer's, uncatchably) or exhausts memory later;
# each leaves room for real models (Llama 3 405B: d_model 16,384, d_ff 53,248, 126 layers).
LIMITS = {
    "vocab_size": (2**20, "byte-level BPE learns no more usefully; Gemma's vocabulary is 262,144"),
    "d_model": (2**16, "4x Llama 3 405B's 16,384"),
    "d_ff": (2**18, "about 5x Llama 3 405B's 53,248"),
    "n_layers": (1024, "8x Llama 3 405B's 126"),
    "ctx_len": (2**20, "the longest real contexts, Qwen2.5-1M's, are about a million tokens"),
    "batch_size": (2**20, "windows per micro-batch; reach a larger batch with gradient_accumulation_steps"),
}
# Keys that name files or folders: the operating system refuses a path with a NUL character in it.
PATH_KEYS = ("save_dir", "train_text", "resume", "init_from")


@dataclass
class Config:
    """Every setting of a muomni run. The defaults are the built-in default job (`muomni train`)."""

    # --- model (μOmni keys) ---
    vocab_size: int = 4096
    n_layers: int = 4
    d_model: int = 192
    n_heads: int = 4
    use_gqa: bool = True
    kv_groups: int = 2
    d_ff: int = 512
    ctx_len: int = 128
    dropout: float = 0.0
    rope_theta: float = 10000.0
    use_swiglu: bool = True
    use_moe: bool = False
    num_experts: int = 4
    num_experts_per_tok: int = 2
    tie_embeddings: bool = False
    rms_norm_eps: float = 1e-5
    qkv_bias: bool = False  # biases on the q/k/v projections (Qwen2); the other linear layers have none

    # --- training (μOmni keys) ---
    batch_size: int = 32
    gradient_accumulation_steps: int = 1
    max_steps: int | None = 300
    max_epochs: int | None = None
    lr: float = 2e-3
    wd: float = 0.1
    warmup_steps: int = 30
    max_grad_norm: float | None = 1.0
    use_amp: bool = True
    use_flash: bool = True
    use_compile: bool = False
    use_gradient_checkpointing: bool = False
    seed: int = 1337
    val_split: float = 0.02
    val_freq: int = 100
    checkpoint_freq: int = 100
    print_freq: int = 10
    save_dir: str = "runs/default"
    train_text: str = "builtin:stdlib"
    num_workers: int = 0
    drop_last: bool = True
    shuffle_buffer_size: int = 0

    # --- muomni's own ---
    amp_dtype: Literal["auto", "bf16", "fp16"] = "auto"
    optimizer: Literal["adamw", "sgd"] = "adamw"
    momentum: float = 0.9
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    min_lr: float | None = None
    compile_mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = "default"
    cpu_offload: Literal["none", "activations", "optimizer"] = "none"
    chunked_ce: bool = True
    gradient_checkpointing_every: int = 1  # with use_gradient_checkpointing: every n-th block (1: all of them)
    overlap_steps: bool = True  # launch step n+1 before reading step n's loss (see trainer.py)
    residual_dtype: Literal["fp32", "bf16"] = "fp32"  # the residual stream's dtype under bf16 autocast
    weight_dtype: Literal["fp32", "bf16"] = "fp32"  # bf16: linear layers compute with bf16 weight copies
    auto_fit: bool | None = None
    empty_cache_steps: int = 0
    keep_checkpoints: int = 3
    resume: str = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    max_nonfinite_steps: int = 20
    distributed: Literal["none", "ddp", "fsdp"] = "none"
    init_from: str | None = None
    val_batches: int = 8

    def __new__(cls, *args: Any, **kwargs: Any) -> Config:
        # The dataclass's __init__ would refuse an unknown key with a bare TypeError: name it as a config file's.
        for key in kwargs:
            _check_key(key)
        return super().__new__(cls)

    def __post_init__(self) -> None:
        for f in fields(self):
            setattr(self, f.name, _coerce(f.name, getattr(self, f.name), _field_types()[f.name]))
        _validate(self)

    # --- derived values ---
    @property
    def n_kv_heads(self) -> int:
        """Key/value heads: ``kv_groups`` with GQA, else one per query head."""
        return self.kv_groups if self.use_gqa else self.n_heads

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def final_lr(self) -> float:
        """The learning rate the schedule decays to (``min_lr``, or a tenth of ``lr`` when unset)."""
        return self.lr * 0.1 if self.min_lr is None else self.min_lr

    @property
    def effective_batch_size(self) -> int:
        return self.batch_size * self.gradient_accumulation_steps

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["betas"] = list(self.betas)
        return out

    def replace(self, **changes: Any) -> Config:
        """A validated copy with some keys changed."""
        return load_config(self.to_dict(), overrides=changes, warn_ignored=False)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")


KEYS = tuple(f.name for f in fields(Config))
# The keys that fix the model's shape: a checkpoint's weights fit only a config with the same values.
MODEL_KEYS = (
    "vocab_size",
    "n_layers",
    "d_model",
    "n_heads",
    "use_gqa",
    "kv_groups",
    "d_ff",
    "ctx_len",
    "rope_theta",
    "use_swiglu",
    "use_moe",
    "num_experts",
    "num_experts_per_tok",
    "tie_embeddings",
    "rms_norm_eps",
    "qkv_bias",
)


def _field_types() -> dict[str, Any]:
    global _TYPES
    if _TYPES is None:
        _TYPES = typing.get_type_hints(Config)
    return _TYPES


_TYPES: dict[str, Any] | None = None


_PLURALS = {int: "integers", float: "numbers", str: "strings"}


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is tuple:
        args = typing.get_args(tp)
        if len(set(args)) == 1 and args[0] in _PLURALS:  # (float, float): "a list of 2 numbers"
            return f"a list of {len(args)} {_PLURALS[args[0]]}"
        return "a list of " + ", ".join(_type_name(a) for a in args)
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string", type(None): "null"}.get(
        tp, str(tp)
    )


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Return ``value`` as type ``tp`` or raise a ConfigError naming the key."""
    origin = typing.get_origin(tp)
    bad = ConfigError(f"config key '{key}': {json.dumps(value, default=str)} is not {_type_name(tp)}")
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(key, value, arg)
            except ConfigError:
                pass
        raise bad
    if origin is Literal:
        if value in typing.get_args(tp):
            return value
        raise ConfigError(f"config key '{key}': {json.dumps(value, default=str)} is not one of {_type_name(tp)}")
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise bad
        return tuple(_coerce(key, v, a) for v, a in zip(value, args))
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise bad
    if tp is int:
        if isinstance(value, bool):
            raise bad
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise bad
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise bad
        return float(value)
    if tp is str:
        if isinstance(value, str):
            return value
        raise bad
    raise TypeError(f"unsupported config type {tp!r} for {key}")


def _check(ok: bool, key: str, value: Any, why: str) -> None:
    if not ok:
        raise ConfigError(f"config key '{key}': {json.dumps(value, default=str)} is invalid: {why}")


def _validate(c: Config) -> None:
    """Ranges and relations between keys. Each failure names the key and its value."""
    for key in ("vocab_size", "n_layers", "d_model", "n_heads", "d_ff", "ctx_len", "batch_size"):
        _check(getattr(c, key) >= 1, key, getattr(c, key), "must be at least 1")
    _check(c.vocab_size >= 259, "vocab_size", c.vocab_size, "a byte-level tokenizer needs at least 259 tokens")
    _check(
        c.gradient_accumulation_steps >= 1,
        "gradient_accumulation_steps",
        c.gradient_accumulation_steps,
        "must be at least 1",
    )
    _check(c.d_model % c.n_heads == 0, "n_heads", c.n_heads, f"must divide d_model ({c.d_model})")
    _check(c.head_dim % 2 == 0, "n_heads", c.n_heads, f"d_model / n_heads = {c.head_dim} must be even for RoPE")
    _check(c.kv_groups >= 1, "kv_groups", c.kv_groups, "must be at least 1")
    if c.use_gqa:
        _check(c.n_heads % c.kv_groups == 0, "kv_groups", c.kv_groups, f"must divide n_heads ({c.n_heads})")
    _check(0.0 <= c.dropout < 1.0, "dropout", c.dropout, "must be in [0, 1)")
    _check(c.rope_theta > 0, "rope_theta", c.rope_theta, "must be positive")
    _check(c.rms_norm_eps > 0, "rms_norm_eps", c.rms_norm_eps, "must be positive")
    if c.use_moe:
        _check(c.num_experts >= 2, "num_experts", c.num_experts, "a mixture of experts needs at least 2")
        _check(
            1 <= c.num_experts_per_tok <= c.num_experts,
            "num_experts_per_tok",
            c.num_experts_per_tok,
            f"must be between 1 and num_experts ({c.num_experts})",
        )
    for key in ("max_steps", "max_epochs"):
        value = getattr(c, key)
        _check(value is None or value >= 1, key, value, "must be at least 1, or null for no limit")
    _check(
        c.max_steps is not None or c.max_epochs is not None,
        "max_steps",
        c.max_steps,
        "max_steps and max_epochs cannot both be null: the run would never end",
    )
    # lr=1e10 trained the default job's model to NaN (every step after the first skipped) and ended with exit 0.
    _check(0 < c.lr <= 10, "lr", c.lr, "must be positive and at most 10 (AdamW's rates are near 1e-3, SGD's below 1)")
    _check(c.min_lr is None or 0 <= c.min_lr <= c.lr, "min_lr", c.min_lr, f"must be between 0 and lr ({c.lr})")
    _check(c.wd >= 0, "wd", c.wd, "must be zero or positive")
    _check(c.warmup_steps >= 0, "warmup_steps", c.warmup_steps, "must be zero or positive")
    _check(
        c.max_grad_norm is None or c.max_grad_norm >= 0,
        "max_grad_norm",
        c.max_grad_norm,
        "must be zero or positive (0 or null disables clipping)",
    )
    _check(0.0 <= c.momentum < 1.0, "momentum", c.momentum, "must be in [0, 1)")
    _check(all(0.0 <= b < 1.0 for b in c.betas), "betas", list(c.betas), "each must be in [0, 1)")
    _check(c.eps > 0, "eps", c.eps, "must be positive")
    _check(0.0 <= c.val_split < 1.0, "val_split", c.val_split, "must be in [0, 1)")
    at_least_one = ("val_freq", "checkpoint_freq", "print_freq", "keep_checkpoints", "max_nonfinite_steps")
    for key in (*at_least_one, "val_batches", "gradient_checkpointing_every"):
        _check(getattr(c, key) >= 1, key, getattr(c, key), "must be at least 1")
    for key in ("num_workers", "shuffle_buffer_size", "empty_cache_steps"):
        _check(getattr(c, key) >= 0, key, getattr(c, key), "must be zero or positive")
    # NumPy's legacy global seed, one of the generators a run seeds, takes 32 bits.
    _check(0 <= c.seed < 2**32, "seed", c.seed, "must be in [0, 2**32 - 1]")
    _check(bool(c.save_dir.strip()), "save_dir", c.save_dir, "must name a folder")
    _check(bool(c.train_text.strip()), "train_text", c.train_text, "must name a file, folder or builtin:stdlib")
    _check(
        c.resume in ("auto", "never") or bool(c.resume.strip()),
        "resume",
        c.resume,
        "must be auto, never or a checkpoint path",
    )
    _check(c.init_from is None or bool(c.init_from.strip()), "init_from", c.init_from, "must be a path or null")
    for key in PATH_KEYS:
        value = getattr(c, key)
        _check(value is None or "\0" not in value, key, value, "a path cannot hold a NUL character")
    for key, (limit, why) in LIMITS.items():
        _check(getattr(c, key) <= limit, key, getattr(c, key), f"must be at most {limit:,} ({why})")


def _check_key(key: Any) -> None:
    """Refuse a key that is not a config key, naming the closest one."""
    if not isinstance(key, str):
        raise ConfigError(f"config keys must be strings, not {key!r}")
    if key not in KEYS:
        raise ConfigError(f"unknown config key '{key}'{_suggest(key)}")


def _suggest(key: str) -> str:
    # Keys are lower case: compared as such, "LR" finds "lr" (two letters apart, it found nothing).
    close = difflib.get_close_matches(key.lower(), KEYS, n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else "; the README's configuration table lists every key"


def load_config(
    source: str | Path | dict[str, Any] | None = None,
    overrides: dict[str, Any] | list[str] | None = None,
    warn_ignored: bool = True,
) -> Config:
    """Build a validated :class:`Config`.

    Args:
        source: a JSON file, a preset name (``debug``, ``default``, ``tiny``, ``small``), a dict, or None
            for the built-in default job.
        overrides: ``{"key": value}`` or ``["key=value", ...]`` applied on top of ``source``.
        warn_ignored: warn once for each key that muomni accepts but does not use.

    Raises:
        ConfigError: an unknown key, a wrong type, an out-of-range value, a missing or non-JSON file.
    """
    data = source_dict(source)
    data.update(overrides_dict(overrides))
    for key in data:
        _check_key(key)
    if warn_ignored:
        for key in sorted(set(data) & set(IGNORED_KEYS)):
            if data[key] != getattr(Config, key):
                warnings.warn(f"config key '{key}' is accepted but not used: {IGNORED_KEYS[key]}", stacklevel=2)
    cfg = Config(**data)
    if warn_ignored and cfg.gradient_checkpointing_every != 1 and not cfg.use_gradient_checkpointing:
        warnings.warn(
            f"config key 'gradient_checkpointing_every' ({cfg.gradient_checkpointing_every}) does nothing without "
            f"use_gradient_checkpointing=true",
            stacklevel=2,
        )
    return cfg


__all__ = ["Config", "KEYS", "MODEL_KEYS", "PRESETS", "load_config", "parse_override", "preset_path"]
