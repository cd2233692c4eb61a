"""Import: a Hugging Face Llama / Qwen2 folder becomes a Thinker with the same logits, or a clear refusal."""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from hf_helpers import tiny_config

from muomni.data.tokenizer import Tokenizer
from muomni.errors import CheckpointError, ConfigError
from muomni.hf import HFInit, export_hf, load_for_training, load_hf
from muomni.models.thinker import Thinker
from muomni.training.sources import initial_sources, refuse_shape_overrides

HF_SHAPE = {
    "vocab_size": 320,
    "hidden_size": 48,
    "num_hidden_layers": 2,
    "num_attention_heads": 6,
    "num_key_value_heads": 2,
    "intermediate_size": 72,
    "max_position_embeddings": 64,
    "rms_norm_eps": 1e-5,
    "rope_theta": 5000.0,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 0,
}


def _randomize(model: torch.nn.Module, zero_biases: bool = True) -> torch.nn.Module:
    """Weights large enough for a meaningful logit check (see hf_helpers.random_thinker); biases zero."""
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
            elif name.endswith("bias") and zero_biases:
                p.zero_()
            else:
                p.normal_(0.0, 0.1)
    return model.eval()


def _save_hf_model(kind: str, folder: Path, tokenizer: Tokenizer, zero_biases: bool = True, **config: Any) -> Any:
    """A tiny random ``LlamaForCausalLM`` / ``Qwen2ForCausalLM`` saved as safetensors, tokenizer.json beside it."""
    transformers = pytest.importorskip("transformers")
    config_cls, model_cls = {
        "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
        "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
    }[kind]
    save_kwargs = {"max_shard_size": config.pop("max_shard_size")} if "max_shard_size" in config else {}
    hf_config = config_cls(**{**HF_SHAPE, **config}, attn_implementation="eager")
    model = _randomize(model_cls(hf_config), zero_biases)
    model.save_pretrained(folder, safe_serialization=True, **save_kwargs)
    tokenizer.save(folder)
    return model


def _assert_same_logits(model: Thinker, reference: Any) -> None:
    x = torch.randint(3, model.config.vocab_size, (2, 31), generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        ours, theirs = model(x), reference(x).logits
    assert ours.abs().max() > 0.5
    assert (ours - theirs).abs().max().item() < 1e-5


@pytest.mark.parametrize(
    "config",
    [
        {"tie_word_embeddings": False},
        {"tie_word_embeddings": True},
        {"num_key_value_heads": 6, "num_attention_heads": 6},  # MHA
        {"num_key_value_heads": 1, "hidden_size": 96, "num_attention_heads": 6},  # head width 16, one kv head
        {"rms_norm_eps": 1e-6},
    ],
)
def test_llama_import_matches_transformers(config: dict, tmp_path: Path, tokenizer: Tokenizer) -> None:
    reference = _save_hf_model("llama", tmp_path, tokenizer, **config)
    model, loaded_tokenizer = load_hf(f"hf:{tmp_path}")
    cfg = model.config
    assert (cfg.d_model, cfg.n_heads, cfg.n_kv_heads) == (
        reference.config.hidden_size,
        reference.config.num_attention_heads,
        reference.config.num_key_value_heads,
    )
    assert cfg.use_gqa == (cfg.n_kv_heads < cfg.n_heads)
    assert (cfg.ctx_len, cfg.rope_theta, cfg.tie_embeddings) == (64, 5000.0, reference.config.tie_word_embeddings)
    assert cfg.rms_norm_eps == reference.config.rms_norm_eps and not cfg.qkv_bias
    assert (loaded_tokenizer.pad_id, loaded_tokenizer.bos_id, loaded_tokenizer.eos_id) == (0, 1, 2)
    _assert_same_logits(model, reference)


def test_sharded_llama_import(tmp_path: Path, tokenizer: Tokenizer) -> None:
    reference = _save_hf_model("llama", tmp_path, tokenizer, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").is_file() and not (tmp_path / "model.safetensors").exists()
    model, _ = load_hf(tmp_path)
    _assert_same_logits(model, reference)


def test_qwen2_with_zero_biases_imports(tmp_path: Path, tokenizer: Tokenizer) -> None:
    reference = _save_hf_model("qwen2", tmp_path, tokenizer, tie_word_embeddings=True)
    model, _ = load_hf(tmp_path)
    _assert_same_logits(model, reference)


def test_qwen2_with_biases_and_its_eps_imports(tmp_path: Path, tokenizer: Tokenizer) -> None:
    """A trained Qwen2 has non-zero q/k/v biases and eps 1e-6: both kept, the same logits."""
    reference = _save_hf_model("qwen2", tmp_path, tokenizer, zero_biases=False, rms_norm_eps=1e-6)
    assert reference.model.layers[0].self_attn.q_proj.bias.abs().max() > 0.05
    model, _ = load_hf(tmp_path)
    assert model.config.qkv_bias and model.config.rms_norm_eps == 1e-6
    _assert_same_logits(model, reference)


def test_load_for_training(tmp_path: Path, tokenizer: Tokenizer) -> None:
    _save_hf_model("llama", tmp_path, tokenizer, tie_word_embeddings=True)
    user = tiny_config(n_layers=7, d_model=64, use_moe=True, batch_size=3, lr=1e-3, ctx_len=32, dropout=0.1)
    init = load_for_training(f"hf:{tmp_path}", user)
    assert isinstance(init, HFInit)
    state, tok, overrides = init  # a plain 3-tuple too
    cfg = user.replace(**overrides)
    assert (cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.kv_groups, cfg.use_gqa, cfg.d_ff) == (2, 48, 6, 2, True, 72)
    assert (cfg.use_moe, cfg.tie_embeddings, cfg.rope_theta) == (False, True, 5000.0)
    assert (cfg.batch_size, cfg.lr, cfg.dropout, cfg.ctx_len) == (3, 1e-3, 0.1, 32)  # the user's training keys
    model = Thinker(cfg)
    model.load_state_dict(state)  # strict: every key, the tied head included
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert tok.eos_id == 2 and tok.encode("def parse") == tokenizer.encode("def parse")
    # ctx_len stays the user's, as with a muomni checkpoint, even past the model's 64 positions.
    assert "ctx_len" not in load_for_training(tmp_path, user.replace(ctx_len=256)).overrides


def test_init_from_hf_refuses_a_model_key_given_against_the_folder(tmp_path: Path, tokenizer: Tokenizer) -> None:
    # As with a muomni checkpoint: d_model given on the command line and the model's 48 would otherwise be
    # dropped without a word, the run training the folder's shape.
    _save_hf_model("llama", tmp_path, tokenizer)
    user = tiny_config(init_from=f"hf:{tmp_path}", d_model=128, ctx_len=32)
    with pytest.raises(ConfigError, match="'d_model': 128 was given, but init_from=hf:.* has 48"):
        refuse_shape_overrides(user, ["init_from", "d_model"])
    refuse_shape_overrides(user, ["init_from", "ctx_len"])  # ctx_len is the user's; d_model not given: silently
    refuse_shape_overrides(user.replace(d_model=48), ["init_from", "d_model"])  # agreeing


def test_muomni_load_accepts_hf_paths(tmp_path: Path, tokenizer: Tokenizer) -> None:
    loading = pytest.importorskip("muomni.inference.loading")
    reference = _save_hf_model("llama", tmp_path, tokenizer)
    model, _ = loading.load(f"hf:{tmp_path}", device="cpu", dtype="fp32")
    model.enable_kv_cache(False)
    _assert_same_logits(model, reference)


# --- refusals, on an exported folder whose config.json is edited (no transformers needed) ---


@pytest.fixture
def hf_folder(make_checkpoint: Callable, tmp_path: Path) -> Path:
    return export_hf(make_checkpoint(), tmp_path / "hf")


@pytest.mark.parametrize("kind", ["hf", "muomni"])
def test_init_from_keeps_a_ctx_len_past_the_models_positions_with_one_warning(
    make_checkpoint: Callable, tmp_path: Path, kind: str
) -> None:
    # ctx_len=128 given against a 64-position model: it was lowered to 64 without a word from hf:, and kept
    # from a muomni checkpoint; now both keep it and say the model was not trained there.
    run = make_checkpoint()
    source = f"hf:{export_hf(run, tmp_path / 'hf')}" if kind == "hf" else str(run)
    key = "max_position_embeddings" if kind == "hf" else "ctx_len"
    with pytest.warns(UserWarning) as said:
        cfg, _, _ = initial_sources(tiny_config(init_from=source, ctx_len=128, d_model=64))
    assert (cfg.ctx_len, cfg.d_model) == (128, 48)
    assert [str(w.message) for w in said] == [
        f"ctx_len 128 is past init_from={source}'s {key} 64: RoPE runs there, but the model was not trained "
        "past 64 positions; ctx_len=64 stays within them"
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert initial_sources(tiny_config(init_from=source, ctx_len=32))[0].ctx_len == 32  # within: silent


def _edit_json(path: Path, **changes: Any) -> None:
    data = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    path.write_text(json.dumps(data))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"rope_scaling": {"rope_type": "linear", "factor": 2.0}}, "rope scaling .* is not supported"),
        ({"rope_parameters": {"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e4}}, "rope scaling"),
        ({"hidden_act": "gelu"}, "hidden_act 'gelu' is not supported"),
        ({"mlp_bias": True}, "mlp_bias=true is not supported"),
        ({"attention_bias": True}, "attention_bias=true is not supported"),
        ({"head_dim": 16}, r"head_dim 16 is not hidden_size / num_attention_heads \(48 / 4\)"),
        (
            {"model_type": "qwen2", "use_sliding_window": True, "sliding_window": 16, "max_window_layers": 1},
            "sliding-window attention",
        ),
        ({"model_type": "qwen2", "layer_types": ["full_attention", "sliding_attention"]}, "sliding-window"),
        ({"model_type": "mistral"}, "model_type 'mistral' is not supported"),
        ({"num_key_value_heads": 3}, "cannot be represented as a muomni Thinker: config key 'kv_groups'"),
        ({"quantization_config": {"quant_method": "gptq"}}, "quantized checkpoints are not supported"),
    ],
)
def test_refuses_what_the_thinker_does_not_compute(hf_folder: Path, changes: dict, message: str) -> None:
    _edit_json(hf_folder / "config.json", **changes)
    with pytest.raises(CheckpointError, match=message):
        load_hf(hf_folder)


def test_inactive_sliding_window_is_accepted(make_checkpoint: Callable, tmp_path: Path) -> None:
    # Qwen2's usual config: a window size is set but use_sliding_window is false, so no layer uses it.
    folder = export_hf(make_checkpoint(qkv_bias=True), tmp_path / "qwen2")
    _edit_json(folder / "config.json", use_sliding_window=False, sliding_window=4096)
    assert load_hf(folder)[0].config.ctx_len == 64


def test_a_llama_folder_with_qkv_biases_is_refused(make_checkpoint: Callable, tmp_path: Path) -> None:
    """Llama's attention has no q/k/v biases (only attention_bias, which adds one to o_proj too)."""
    folder = export_hf(make_checkpoint(qkv_bias=True), tmp_path / "qwen2")
    _edit_json(folder / "config.json", model_type="llama")
    with pytest.raises(CheckpointError, match=r"unexpected weight model\.layers\.0\.self_attn\.\w_proj\.bias"):
        load_hf(folder)


def test_pickle_only_folder_is_refused_without_reading_it(hf_folder: Path) -> None:
    (hf_folder / "model.safetensors").unlink()
    (hf_folder / "pytorch_model.bin").write_bytes(b"\x80\x04 this would be a pickle")
    with pytest.raises(CheckpointError, match=r"holds only pickle \.bin weights \(pytorch_model\.bin\), which can run"):
        load_hf(hf_folder)


def test_missing_pieces(hf_folder: Path, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="is not a local folder; muomni never downloads"):
        load_hf("hf:meta-llama/Llama-2-7b-hf")
    (hf_folder / "tokenizer.json").rename(tmp_path / "tokenizer.json")
    with pytest.raises(CheckpointError, match="has no tokenizer.json"):
        load_hf(hf_folder)
    (tmp_path / "tokenizer.json").rename(hf_folder / "tokenizer.json")
    (hf_folder / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="holds no model.safetensors"):
        load_hf(hf_folder)


def test_mismatched_weights_are_named(hf_folder: Path) -> None:
    _edit_json(hf_folder / "config.json", intermediate_size=81)
    with pytest.raises(CheckpointError, match=r"model\.layers\.0\.mlp\.gate_proj\.weight has shape \[80, 48\]"):
        load_hf(hf_folder)


def test_special_ids(hf_folder: Path) -> None:
    # No pad anywhere: pad is eos. A list of eos ids (chat models): the first.
    _edit_json(hf_folder / "config.json", pad_token_id=None, eos_token_id=[2, 1])
    _edit_json(hf_folder / "generation_config.json", pad_token_id=None)
    _edit_json(hf_folder / "tokenizer_config.json", pad_token=None)
    tok = load_hf(hf_folder)[1]
    assert (tok.pad_id, tok.bos_id, tok.eos_id) == (2, 1, 2)
    # No ids in the configs: the token names of tokenizer_config.json.
    for name in ("config.json", "generation_config.json"):
        _edit_json(hf_folder / name, pad_token_id=None, bos_token_id=None, eos_token_id=None)
    _edit_json(hf_folder / "tokenizer_config.json", pad_token={"content": "<pad>"}, bos_token=None)
    tok = load_hf(hf_folder)[1]
    assert (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 2, 2)
    _edit_json(hf_folder / "tokenizer_config.json", eos_token=None)
    with pytest.raises(CheckpointError, match="no eos token"):
        load_hf(hf_folder)
