"""The μOmni Thinker: a decoder-only language model (RMSNorm, RoPE, grouped-query attention, SwiGLU, MoE).

One ``forward(tokens, input_pos=None)`` serves training and cached decoding: without ``input_pos`` the
whole sequence is processed causally; with it, the tokens sit at cache slots ``input_pos`` and attend to
every earlier slot that holds a real (not padding) token. Checkpointing, compilation and precision are
applied from outside (:func:`checkpoint_blocks`, ``torch.compile``, autocast); ``forward`` has no modes.

Module names follow Hugging Face ``LlamaForCausalLM`` (``model.embed_tokens``, ``model.layers.N.self_attn
.q_proj``, ``model.norm``, ``lm_head``), so the state dict is the Llama state dict.
"""

from __future__ import annotations

import math
from functools import partial

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from muomni.config import Config
from muomni.models import decode_ops
from muomni.models.decode_ops import norm_linear, one_kernel_ready
from muomni.models.kv_cache import KVCache
from muomni.models.layers import MLP, Attention, Linear, MoE, RMSNorm, rope_tables

INIT_STD = 0.02


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.d_model, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.dropout, cfg.use_flash, cfg.qkv_bias)
        self.post_attention_layernorm = RMSNorm(cfg.d_model, cfg.rms_norm_eps)
        if cfg.use_moe:
            self.mlp: nn.Module = MoE(cfg.d_model, cfg.d_ff, cfg.num_experts, cfg.num_experts_per_tok, cfg.use_swiglu)
        else:
            self.mlp = MLP(cfg.d_model, cfg.d_ff, cfg.use_swiglu)
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor | None = None,
        input_pos: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if input_pos is not None and not self.training:  # cached decoding: fused kernels in a compiled step
            x = self.self_attn.add_to(x, cos, sin, mask, input_pos, self.input_layernorm)
            if isinstance(self.mlp, MLP):
                return self.mlp.add_to(x, self.post_attention_layernorm)
            return x + self.mlp(self.post_attention_layernorm(x))
        x = x + self.resid_dropout(self.self_attn(x, cos, sin, mask, input_pos, self.input_layernorm))
        return x + self.resid_dropout(self.mlp(self.post_attention_layernorm(x)))


class ThinkerModel(nn.Module):
    """Embedding, blocks and final norm: tokens [B, T] -> hidden states [B, T, D]."""

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.d_model, cfg.rms_norm_eps)
        self.embed_dropout = nn.Dropout(cfg.dropout)
        cos, sin = rope_tables(cfg.head_dim, cfg.ctx_len, cfg.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)  # [ctx_len, Dh]
        self.register_buffer("rope_sin", sin, persistent=False)
        # Which key slots hold real tokens, per row [B, S]; left padding of batched prompts is False.
        self.register_buffer("key_valid", torch.ones(1, cfg.ctx_len, dtype=torch.bool), persistent=False)
        self.cached = False
        self.cache_len = 0  # slots of the static KV cache, when one is set up
        self.residual_bf16 = cfg.residual_dtype == "bf16"

    def forward(self, tokens: torch.Tensor, input_pos: torch.Tensor | None = None) -> torch.Tensor:
        return self.norm(self.residual_stream(tokens, input_pos))

    def residual_stream(self, tokens: torch.Tensor, input_pos: torch.Tensor | None = None) -> torch.Tensor:
        """The last block's output [B, T, D], before the final norm."""
        mask = None if input_pos is None else self.attention_mask(input_pos, tokens.shape[0])
        x = self.embed_dropout(self.embed_tokens(tokens))  # [B, T, D]
        if self.residual_bf16 and torch.is_autocast_enabled(x.device.type):
            # Autocast leaves the fp32 embedding's output in fp32, and every residual add with it; in bf16 the
            # stream, and each norm's read of it, moves half the bytes (the norms still compute in fp32).
            x = x.to(torch.bfloat16)
        for layer in self.layers:  # each takes its tokens' rows of the RoPE tables
            x = layer(x, self.rope_cos, self.rope_sin, mask, input_pos)
        return x

    def attention_mask(self, input_pos: torch.Tensor, batch: int) -> torch.Tensor:
        """[B, 1, T, S]: query at slot p sees key slots <= p that hold real tokens, and always itself.

        Keys are the whole cache when it is on (S = cache length), else the tokens of this call (S = T).
        Letting a padding query see itself keeps its softmax finite; its output is never used.
        """
        key_valid = self.key_valid[:batch] if self.key_valid.shape[0] > 1 else self.key_valid
        if self.cached:
            key_pos = torch.arange(self.cache_len, device=input_pos.device)  # [S]
            key_valid = key_valid[:, : self.cache_len]
        else:
            key_pos, key_valid = input_pos, key_valid[:, input_pos]
        causal = key_pos[None, :] <= input_pos[:, None]  # [T, S]
        itself = key_pos[None, :] == input_pos[:, None]
        return ((causal[None] & key_valid[:, None, :]) | itself[None])[:, None]  # [B, 1, T, S]


class Thinker(nn.Module):
    """The language model: :class:`ThinkerModel` plus the ``lm_head`` (optionally tied to the embedding)."""

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.config = cfg
        self.model = ThinkerModel(cfg)
        self.lm_head = Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.apply(self._init_weights)
        # Residual projections start smaller so the residual stream's variance does not grow with depth
        # (GPT-2, Radford et al. 2019).
        for name, p in self.named_parameters():
            if name.endswith(("o_proj.weight", "down_proj.weight")):
                nn.init.normal_(p, mean=0.0, std=INIT_STD / math.sqrt(2 * cfg.n_layers))
        if cfg.tie_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        # Who knows what the KV cache holds: a caller that tracks it (muomni.inference.prefix.KVPrefix) sets
        # itself here after a generation; a new cache, a reset or the cache turned off clears it.
        self.cache_owner: object | None = None

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=INIT_STD)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, tokens: torch.Tensor, input_pos: torch.Tensor | None = None) -> torch.Tensor:
        """tokens [B, T] -> logits [B, T, V]; ``input_pos`` [T] gives the cache slots of cached decoding."""
        norm, head = self.model.norm, self.lm_head
        fused_head = tokens.shape[0] <= decode_ops.HEAD_FUSED_MAX_BATCH  # one row; more read the head once via cuBLAS
        one_token = tokens.shape[1] == 1 and fused_head and input_pos is not None
        if one_token and one_kernel_ready(head.weight, [norm.weight, self.model.embed_tokens.weight]):
            x = self.model.residual_stream(tokens, input_pos)  # a compiled decode step: the norm goes with the head
            return norm_linear(x[:, 0], norm.weight, norm.eps, head.weight)[:, None]
        return head(self.model(tokens, input_pos))

    # --- KV cache (the founding document's API) ---
    @property
    def attentions(self) -> list[Attention]:
        return [layer.self_attn for layer in self.model.layers]

    def setup_caches(self, max_batch: int, max_len: int, dtype: torch.dtype | None = None) -> None:
        """Preallocate the key-padding table and, when the KV cache is on, one static cache per layer.

        Reuses what is there when it is large enough, so repeated generation allocates nothing.
        """
        if max_len > self.config.ctx_len:
            raise ValueError(f"max_len {max_len} exceeds ctx_len {self.config.ctx_len}")
        device = self.lm_head.weight.device
        dtype = dtype or self.lm_head.weight.dtype
        valid = self.model.key_valid
        if valid.shape[0] < max_batch or valid.device != device:
            self.model.key_valid = torch.ones(max_batch, self.config.ctx_len, dtype=torch.bool, device=device)
        if not self.model.cached:
            return
        cache = self.attentions[0].kv_cache
        fits = cache is not None and cache.k.shape[0] >= max_batch and cache.k.shape[2] >= max_len
        if fits and cache.k.dtype == dtype and cache.k.device == device:
            return
        for attn in self.attentions:
            attn.kv_cache = KVCache(max_batch, attn.n_kv_heads, max_len, attn.head_dim, dtype, device)
        self.model.cache_len = max_len
        self.cache_owner = None

    def enable_kv_cache(self, enabled: bool = True) -> None:
        """Turn the KV cache on (decoding reuses past keys/values) or off (each step recomputes them)."""
        self.model.cached = enabled
        self.cache_owner = None
        if not enabled:
            for attn in self.attentions:
                attn.kv_cache = None

    @property
    def kv_cache_enabled(self) -> bool:
        return self.model.cached

    def reset_kv_cache(self) -> None:
        """Forget every cached key/value and padding mark, so the next prompt starts clean."""
        self.cache_owner = None
        self.model.key_valid.fill_(True)
        for attn in self.attentions:
            if attn.kv_cache is not None:
                attn.kv_cache.reset()

    def set_key_padding(self, valid: torch.Tensor) -> None:
        """Mark the slots [B, T] of a left-padded prompt batch: True for real tokens, False for padding."""
        b, t = valid.shape
        self.model.key_valid[:b, :t].copy_(valid)
        self.model.key_valid[:b, t:].fill_(True)

    def num_params(self, non_embedding: bool = False) -> int:
        """Parameter count (tied weights once); ``non_embedding`` leaves out the token embedding."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.model.embed_tokens.weight.numel() if non_embedding else n


def checkpoint_blocks(model: Thinker, reentrant: bool = False, every: int = 1) -> Thinker:
    """Recompute the activations of every ``every``-th block (blocks 0, every, 2 every, ...; 1: all of them) in
    the backward pass instead of storing them. Checkpointing a part of the blocks saves that part of what
    full checkpointing saves, at that part of its recomputation: a setting between the two for a model whose
    memory lies between them.

    Both of PyTorch's kinds give the same gradients as without checkpointing. The non-reentrant kind (the
    one PyTorch recommends) works everywhere: ``torch.compile`` traces it, DDP and FSDP see every gradient.
    The ``reentrant`` kind recomputes a block inside a backward of its own, without the non-reentrant kind's
    pack and unpack hooks on every saved tensor: about half the host work a step in eager mode (a 2-core CPU
    at widths where a step is all host work: 29.3 against 39.5 ms), which a fast GPU can wait for (an H200's
    small-preset fp16 step, on a start whose host was slow: 75.9 against 102.8 ms; the bench's rows on a
    later start were even, within their spread). Its limits: a block's input must require grad (in
    training, the embedding's output always does), gradients come from ``backward()`` only, and compiled
    graphs break at every block. Without grad (evaluation) a block runs plainly: nothing is recomputed.

    The block's ``forward`` is replaced on the instance, so parameter names and the state dict are unchanged.
    """
    if every < 1:
        raise ValueError(f"every must be at least 1 (1: every block), not {every}")
    for block in list(model.model.layers)[::every]:
        block.forward = partial(_checkpointed_forward, block, reentrant)
    return model


def _checkpointed_forward(block: Block, reentrant: bool, *args: torch.Tensor | None) -> torch.Tensor:
    if not torch.is_grad_enabled():  # nothing is kept for a backward pass, so there is nothing to recompute
        return type(block).forward(block, *args)
    return checkpoint(type(block).forward, block, *args, use_reentrant=reentrant)
