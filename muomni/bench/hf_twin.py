"""The Hugging Face ``LlamaForCausalLM`` that computes what a Thinker computes, with its very weights.

Both benchmarks compare against it; building it in one place keeps the weight check in one place: every
tensor must load, only HF's rotary buffers may be missing.
"""

from __future__ import annotations

from muomni.hf.mapping import llama_config
from muomni.models.thinker import Thinker


def llama_twin(model: Thinker, attn_implementation: str = "sdpa"):  # noqa: ANN201
    """A ``LlamaForCausalLM`` on the model's device and dtype with the model's weights."""
    from transformers import LlamaConfig, LlamaForCausalLM

    weight = model.lm_head.weight
    hf_cfg = LlamaConfig(**llama_config(model.config, 1, 2, 0, weight.dtype))
    hf_cfg._attn_implementation = attn_implementation
    twin = LlamaForCausalLM(hf_cfg)
    missing, unexpected = twin.load_state_dict(model.state_dict(), strict=False)
    if unexpected or not all("rotary" in k for k in missing):
        raise RuntimeError(f"Llama twin does not match the Thinker: missing {missing}, unexpected {unexpected}")
    return twin.to(device=weight.device, dtype=weight.dtype)
