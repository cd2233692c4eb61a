"""How a muomni Thinker maps onto Hugging Face ``LlamaForCausalLM`` (and ``Qwen2ForCausalLM``): config keys,
weight names and shapes, and what cannot be represented.

The Thinker's module names are Llama's, so the weight map is the identity; what this module owns is the
config translation in both directions and the checks that a Hugging Face config describes exactly the
computation the Thinker performs (plain RoPE, full causal attention, SiLU-gated MLP, no biases but
Qwen2's on q/k/v). A Thinker with q/k/v biases (``qkv_bias``) is a Qwen2 model; every other one a Llama.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from muomni.config import MODEL_KEYS as CONFIG_MODEL_KEYS
from muomni.config import Config
from muomni.errors import CheckpointError

# model_type -> the architecture name its config.json lists.
ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}
# transformers' defaults for keys a config.json may leave out.
_DEFAULT_MAX_POSITIONS = {"llama": 2048, "qwen2": 32768}
_DEFAULT_RMS_NORM_EPS = 1e-6

# The Config keys that an imported model decides (everything else stays the user's); a Llama or Qwen2
# model is dense, so the expert counts are not among them.
MODEL_KEYS = tuple(k for k in CONFIG_MODEL_KEYS if k not in ("num_experts", "num_experts_per_tok"))


def check_exportable(cfg: Config) -> None:
    """Raise CheckpointError when ``cfg`` describes a model that Llama cannot express.

    A GELU MLP (``use_swiglu`` false) would need GPT-NeoX-style parallel blocks or a custom class, and
    no Hugging Face architecture has muomni's exact pre-norm block with an ungated GELU MLP, RoPE and GQA.
    """
    if cfg.use_moe:
        raise CheckpointError(
            "MoE models have no Hugging Face Llama equivalent; export supports dense models only "
            "(train with use_moe=false to get an exportable model)"
        )
    if not cfg.use_swiglu:
        raise CheckpointError(
            "models with a GELU MLP (use_swiglu=false) have no Hugging Face Llama equivalent; "
            "export supports SwiGLU models only (train with use_swiglu=true)"
        )


def hf_config(cfg: Config, bos_id: int, eos_id: int, pad_id: int, dtype: torch.dtype) -> dict[str, Any]:
    """The ``config.json`` of the Hugging Face model that computes what a Thinker with ``cfg`` computes.

    ``LlamaForCausalLM``, or ``Qwen2ForCausalLM`` when ``cfg.qkv_bias`` (Llama's ``attention_bias`` would
    add one to the output projection too). ``rope_theta`` and ``torch_dtype`` are the transformers 4.x
    spellings; 5.x reads both (as ``rope_parameters`` and ``dtype``), so one file serves every version.
    """
    config = llama_config(cfg, bos_id, eos_id, pad_id, dtype)
    if not cfg.qkv_bias:
        return config
    for llama_only in ("attention_bias", "mlp_bias", "head_dim"):
        del config[llama_only]
    return {
        **config,
        "architectures": [ARCHITECTURES["qwen2"]],
        "model_type": "qwen2",
        "use_sliding_window": False,
        "sliding_window": None,
        "max_window_layers": cfg.n_layers,
    }


def llama_config(cfg: Config, bos_id: int, eos_id: int, pad_id: int, dtype: torch.dtype) -> dict[str, Any]:
    """The ``LlamaForCausalLM`` config.json of ``cfg``, leaving out any q/k/v biases (see :func:`hf_config`)."""
    return {
        "architectures": [ARCHITECTURES["llama"]],
        "model_type": "llama",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_heads,
        "head_dim": cfg.head_dim,
        "intermediate_size": cfg.d_ff,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.ctx_len,
        "rope_theta": cfg.rope_theta,
        "rms_norm_eps": cfg.rms_norm_eps,
        "tie_word_embeddings": cfg.tie_embeddings,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "initializer_range": 0.02,
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
        "pad_token_id": pad_id,
        "torch_dtype": str(dtype).removeprefix("torch."),
        "use_cache": True,
    }


def _rope_theta(hf: dict[str, Any], where: str) -> float:
    """``rope_theta``, refusing any RoPE scaling (4.x: ``rope_scaling``; 5.x: ``rope_parameters``)."""
    scaling = hf.get("rope_scaling")
    params = hf.get("rope_parameters") or {}
    for value in (scaling, params):
        kind = value.get("rope_type", value.get("type", "default")) if isinstance(value, dict) else None
        if value is not None and kind != "default":
            raise CheckpointError(
                f"{where}: rope scaling {value} is not supported; muomni implements plain RoPE only "
                "(a model with rope_scaling, e.g. Llama 3.1 or YaRN, would compute different positions)"
            )
    theta = hf.get("rope_theta", params.get("rope_theta", 10000.0))
    return float(theta)


def _sliding_window_in_use(hf: dict[str, Any]) -> bool:
    """Qwen2 windows layers ``>= max_window_layers`` when ``use_sliding_window`` (5.x also lists ``layer_types``)."""
    if "sliding_attention" in (hf.get("layer_types") or []):
        return True
    if not hf.get("use_sliding_window", False) or hf.get("sliding_window") is None:
        return False
    return hf.get("max_window_layers", 0) < hf["num_hidden_layers"]


def _refuse_unsupported(hf: dict[str, Any], where: str) -> None:
    """Raise CheckpointError for each feature of ``hf`` the Thinker does not compute."""
    model_type = hf.get("model_type")
    if model_type not in ARCHITECTURES:
        names = ", ".join(ARCHITECTURES.values())
        raise CheckpointError(f"{where}: model_type {model_type!r} is not supported; muomni imports {names}")
    if hf.get("quantization_config"):
        raise CheckpointError(f"{where}: quantized checkpoints are not supported; give the full-precision weights")
    act = hf.get("hidden_act", "silu")
    if act != "silu":
        raise CheckpointError(f"{where}: hidden_act {act!r} is not supported; muomni's MLP is SwiGLU (silu)")
    for key in ("attention_bias", "mlp_bias"):
        if hf.get(key, False):
            raise CheckpointError(f"{where}: {key}=true is not supported; muomni's linear layers have no bias")
    if _sliding_window_in_use(hf):
        raise CheckpointError(
            f"{where}: sliding-window attention (window {hf.get('sliding_window')}) is not supported; "
            "muomni attends to the full context"
        )


def model_keys_from_hf(hf: dict[str, Any], where: str) -> dict[str, Any]:
    """The muomni model keys (:data:`MODEL_KEYS`) of a Hugging Face ``config.json``.

    Args:
        hf: the parsed ``config.json``.
        where: the folder, for error messages.

    Raises:
        CheckpointError: the config uses a feature the Thinker does not compute, or has shapes it cannot hold.
    """
    _refuse_unsupported(hf, where)
    try:
        d_model, n_heads = int(hf["hidden_size"]), int(hf["num_attention_heads"])
        n_layers, d_ff, vocab = int(hf["num_hidden_layers"]), int(hf["intermediate_size"]), int(hf["vocab_size"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{where}: config.json lacks or has a bad {e}; it is not a complete model config")
    kv_heads = int(hf.get("num_key_value_heads") or n_heads)
    head_dim = hf.get("head_dim")
    if head_dim is not None and head_dim * n_heads != d_model:
        raise CheckpointError(
            f"{where}: head_dim {head_dim} is not hidden_size / num_attention_heads ({d_model} / {n_heads}); "
            "muomni derives the head width from d_model"
        )
    return {
        "vocab_size": vocab,
        "n_layers": n_layers,
        "d_model": d_model,
        "n_heads": n_heads,
        "use_gqa": kv_heads < n_heads,
        "kv_groups": kv_heads,
        "d_ff": d_ff,
        # Kept as is: RoPE tables are computed up to ctx_len, and the weights do not depend on it.
        "ctx_len": int(hf.get("max_position_embeddings") or _DEFAULT_MAX_POSITIONS[hf["model_type"]]),
        "rope_theta": _rope_theta(hf, where),
        "use_swiglu": True,
        "use_moe": False,
        "tie_embeddings": bool(hf.get("tie_word_embeddings", False)),
        "rms_norm_eps": float(hf.get("rms_norm_eps", _DEFAULT_RMS_NORM_EPS)),
        "qkv_bias": hf["model_type"] == "qwen2",  # Qwen2's attention always has q/k/v biases
    }


def expected_shapes(cfg: Config) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor a checkpoint of ``cfg`` holds (a tied ``lm_head`` is left out).

    Taken from a Thinker built on the meta device (no memory, no init cost), so the model file stays the
    single source of truth for names and shapes.
    """
    from muomni.models.thinker import Thinker

    with torch.device("meta"):
        model = Thinker(cfg)
    state = model.state_dict()
    if cfg.tie_embeddings:
        state.pop("lm_head.weight")
    return {name: tuple(t.shape) for name, t in state.items()}


def check_state(state: dict[str, torch.Tensor], cfg: Config, where: Path | str) -> None:
    """Raise CheckpointError unless ``state`` holds exactly the tensors of ``cfg``, with their shapes."""
    expected = expected_shapes(cfg)
    missing = sorted(set(expected) - set(state))
    if missing:
        raise CheckpointError(f"{where}: weight {missing[0]} is missing ({len(missing)} missing in all)")
    extra = sorted(set(state) - set(expected))
    if extra:
        raise CheckpointError(f"{where}: unexpected weight {extra[0]} ({len(extra)} unexpected in all)")
    for name, shape in expected.items():
        if tuple(state[name].shape) != shape:
            raise CheckpointError(
                f"{where}: weight {name} has shape {list(state[name].shape)}, the config needs {list(shape)}"
            )
    for name, t in state.items():
        if not t.is_floating_point():
            raise CheckpointError(f"{where}: weight {name} has dtype {t.dtype}; expected floating-point weights")
