"""``muomni.load``: a checkpoint (or a run's newest one) -> a Thinker ready to generate, and its tokenizer."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import torch
from safetensors import safe_open

from muomni.config import Config
from muomni.data import Tokenizer
from muomni.errors import CheckpointError, DataError, InputError
from muomni.models.layers import rope_tables
from muomni.models.thinker import Thinker
from muomni.paths import HF_PREFIX
from muomni.training.checkpoint import MODEL_FILE, TOKENIZER_FILE, load_tensors, read_checkpoint, read_config

_DTYPES = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
}
_DEVICE = re.compile(r"(cpu|cuda)(:\d+)?")


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """``None`` or ``"auto"``: CUDA when available, else CPU. Asking for CUDA without one is a user error."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not isinstance(device, (str, torch.device)) or not _DEVICE.fullmatch(str(device)):
        raise InputError(f"device {device!r} is not one of auto, cpu, cuda or cuda:N")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError("device 'cuda' was asked for but PyTorch sees no CUDA GPU; use --device cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise InputError(f"device {device} does not exist: PyTorch sees {torch.cuda.device_count()} CUDA GPUs")
    return device


def pick_dtype(device: torch.device, dtype: str | torch.dtype | None = None) -> torch.dtype:
    """``None`` or ``"auto"``: bf16 on a GPU that has it, else fp16 on CUDA; fp32 on CPU."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None or dtype == "auto":
        if device.type != "cuda":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if dtype not in _DTYPES:
        raise InputError(f"dtype {dtype!r} is not one of auto, {', '.join(_DTYPES)}")
    return _DTYPES[dtype]


def load(
    path: str | Path, device: str | torch.device | None = None, dtype: str | torch.dtype | None = None
) -> tuple[Thinker, Tokenizer]:
    """Load a trained model and its tokenizer, ready for :func:`muomni.generate`.

    Args:
        path: a run folder (its newest complete checkpoint is used, chosen again if a training run deletes
            it while it is read), one checkpoint folder (it needs only model.safetensors, config.json and
            tokenizer.json), or ``"hf:<folder>"`` for a local Hugging Face Llama/Qwen folder (via
            ``muomni.hf.load_hf``).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``...; None picks CUDA when available.
        dtype: ``"fp32"``, ``"bf16"``, ``"fp16"`` or a torch dtype; None picks bf16 on CUDA (fp16 where
            the GPU lacks bf16) and fp32 on CPU.

    Returns:
        ``(model, tokenizer)``: the model in eval mode on ``device`` in ``dtype``, with the KV cache on.

    Raises:
        CheckpointError: a missing, incomplete or mismatched checkpoint.
        InputError: a device or dtype that cannot be used, or an ``hf:`` path without Hugging Face import.
    """
    target = pick_device(device)
    if str(path).startswith(HF_PREFIX):
        model, tokenizer = _load_hf(str(path).removeprefix(HF_PREFIX))
    else:
        model, tokenizer = read_checkpoint(path, _read_model)
    return prepare_for_inference(model, target, pick_dtype(target, dtype)), tokenizer


def prepare_for_inference(model: Thinker, device: torch.device, dtype: torch.dtype) -> Thinker:
    """Move and cast ``model``, switch to eval mode without gradients, and turn the KV cache on."""
    model = model.to(device=device, dtype=dtype).eval().requires_grad_(False)
    # Module.to casts every float buffer; the RoPE tables stay fp32 so positions keep full precision
    # (apply_rope computes in fp32 and casts the result to the activations' dtype).
    cfg = model.config
    cos, sin = rope_tables(cfg.head_dim, cfg.ctx_len, cfg.rope_theta)
    model.model.rope_cos, model.model.rope_sin = cos.to(device), sin.to(device)
    model.enable_kv_cache(True)
    return model


def _load_hf(name: str) -> tuple[Thinker, Tokenizer]:
    try:
        hf = importlib.import_module("muomni.hf")
    except ModuleNotFoundError as e:
        if e.name != "muomni.hf":
            raise
        hf = None
    if hf is None or not hasattr(hf, "load_hf"):
        raise InputError("hf: paths are not yet available in this version; give a muomni checkpoint folder")
    return hf.load_hf(name)


def _read_model(ckpt: Path) -> tuple[Thinker, Tokenizer]:
    """The model and tokenizer of one checkpoint folder; it reads only ``INFERENCE_FILES``, and only those
    are checked, so a model shared without its optimizer state loads."""
    model = _build_model(ckpt, read_config(ckpt))
    return model, _read_tokenizer(ckpt, model.config)


def _build_model(ckpt: Path, cfg: Config) -> Thinker:
    """A Thinker with the checkpoint's weights: every key must match, except a tied ``lm_head``."""
    path = ckpt / MODEL_FILE
    if not path.is_file():
        raise CheckpointError(f"checkpoint {ckpt} has no {MODEL_FILE}")
    cfg = cfg.replace(dropout=0.0)  # inference never drops out; this also skips dropout work
    # Shapes first, from the file's header and a model on the meta device (no memory): a config.json that
    # disagrees with the weights (a vocab_size of billions) must not allocate its model before it is refused.
    _check_shapes(_model_shapes(cfg), _saved_shapes(path), ckpt)
    state = load_tensors(path)
    model = Thinker(cfg)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if cfg.tie_embeddings:
        missing = [k for k in missing if k != "lm_head.weight"]
        model.lm_head.weight = model.model.embed_tokens.weight  # keep the tie whatever load_state_dict did
    if missing or unexpected:
        raise CheckpointError(
            f"{path} does not match its config.json: missing {_few(missing)}, unexpected {_few(unexpected)}"
        )
    return model


def _model_shapes(cfg: Config) -> dict[str, list[int]]:
    with torch.device("meta"):
        return {name: list(t.shape) for name, t in Thinker(cfg).state_dict().items()}


def _saved_shapes(path: Path) -> dict[str, list[int]]:
    """The shape of every tensor in a safetensors file, read from its header alone."""
    try:
        with safe_open(str(path), framework="pt") as f:
            names = f.keys()  # a list: safe_open's handle is not itself iterable
            return {name: list(f.get_slice(name).get_shape()) for name in names}
    except Exception as e:  # safetensors raises several types for a truncated or foreign file
        raise CheckpointError(f"{path} is not a readable safetensors file ({type(e).__name__}); it may be corrupt")


def _check_shapes(expected: dict[str, list[int]], saved: dict[str, list[int]], ckpt: Path) -> None:
    for name, shape in saved.items():
        if name in expected and expected[name] != shape:
            raise CheckpointError(
                f"checkpoint {ckpt}: {name} has shape {shape} but its config.json gives {expected[name]}"
            )


def _few(names: list[str]) -> str:
    return "none" if not names else ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def _read_tokenizer(ckpt: Path, cfg: Config) -> Tokenizer:
    """The checkpoint's ``tokenizer.json``, else the run folder's (two levels up)."""
    for path in (ckpt / TOKENIZER_FILE, ckpt.parent.parent / TOKENIZER_FILE):
        if path.is_file():
            try:
                tokenizer = Tokenizer.load(path)
            except DataError as e:
                raise CheckpointError(str(e))
            if tokenizer.vocab_size > cfg.vocab_size:
                raise CheckpointError(
                    f"{path} has {tokenizer.vocab_size} tokens but the model's vocab_size is {cfg.vocab_size}"
                )
            return tokenizer
    raise CheckpointError(f"checkpoint {ckpt} has no {TOKENIZER_FILE}")
