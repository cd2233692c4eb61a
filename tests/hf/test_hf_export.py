"""Export: the Hugging Face folder computes what the Thinker computes, and tokenizes as muomni does."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from hf_helpers import (
    ROOT,
    UNICODE_TEXT,
    greedy,
    load_hf_reference,
    random_thinker,
    save_checkpoint,
    tiny_config,
)
from safetensors.torch import load_file
from tokenizers import Tokenizer as HFTokenizer

from muomni.data.tokenizer import Tokenizer
from muomni.errors import CheckpointError
from muomni.hf import export_hf, load_hf, save_hf
from muomni.inference.generate import generate_tokens
from muomni.training.checkpoint import latest_checkpoint, resolve_checkpoint
from muomni.training.faults import KILL_ENV

# Odd shapes on purpose: d_model not a power of two, head widths 8/12/16, one kv head, tied and untied.
SHAPES = {
    "mha-untied": {"d_model": 48, "n_heads": 4, "use_gqa": False, "tie_embeddings": False},
    "gqa-tied": {"d_model": 96, "n_heads": 6, "kv_groups": 2, "tie_embeddings": True, "vocab_size": 512},
    "kv1-untied": {"d_model": 48, "n_heads": 6, "kv_groups": 1, "d_ff": 72, "rope_theta": 500.0},
    "mha-tied-3layers": {"d_model": 64, "n_heads": 4, "use_gqa": False, "n_layers": 3, "tie_embeddings": True},
    # q/k/v biases and Qwen2's eps: exported as a Qwen2ForCausalLM
    "qwen2-bias": {"d_model": 48, "n_heads": 6, "kv_groups": 2, "qkv_bias": True, "rms_norm_eps": 1e-6},
}


def _prompts(vocab: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(3, vocab, (3, 29), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("shape", SHAPES)
def test_exported_logits_and_greedy_tokens_match(shape: str, make_checkpoint: Callable, tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    out = export_hf(make_checkpoint(seed=7, **SHAPES[shape]), tmp_path / "hf")
    model = random_thinker(tiny_config(**SHAPES[shape]), seed=7)  # the model the checkpoint holds
    reference = load_hf_reference(out)
    architecture = json.loads((out / "config.json").read_text())["architectures"]
    assert architecture == ["Qwen2ForCausalLM" if model.config.qkv_bias else "LlamaForCausalLM"]
    assert type(reference).__name__ == architecture[0]

    x = _prompts(model.config.vocab_size)
    with torch.inference_mode():
        ours, theirs = model(x), reference(x).logits
    assert ours.abs().max() > 0.5, "logits too small for the 1e-5 check to mean anything"
    assert (ours - theirs).abs().max().item() < 1e-5

    eos = 2  # the exported eos id: both sides stop after it
    prompts = x[:, :7].tolist()
    expected = [greedy(model, prompt, 12, eos) for prompt in prompts]
    for prompt, ours_ids in zip(prompts, expected):
        with torch.inference_mode():
            got = reference.generate(
                torch.tensor([prompt]),
                attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                max_new_tokens=12,
                do_sample=False,
                eos_token_id=eos,
                pad_token_id=0,
            )
        assert got[0].tolist() == ours_ids
    # muomni's own batched, KV-cached greedy decoding gives the same tokens.
    model.enable_kv_cache(True)
    new_ids = generate_tokens(model, prompts, max_new_tokens=12, temperature=0.0, eos_id=eos)
    assert [p + n for p, n in zip(prompts, new_ids)] == expected


def test_config_and_files(make_checkpoint: Callable, tmp_path: Path, tokenizer: Tokenizer) -> None:
    out = export_hf(make_checkpoint(kv_groups=2, tie_embeddings=True, rope_theta=2e5), tmp_path / "hf")
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "special_tokens_map.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    config = json.loads((out / "config.json").read_text())
    expected = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": 48,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 12,
        "intermediate_size": 80,
        "hidden_act": "silu",
        "rope_theta": 2e5,
        "rms_norm_eps": 1e-5,
        "max_position_embeddings": 64,
        "tie_word_embeddings": True,
        "vocab_size": 320,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 0,
        "torch_dtype": "float32",
        "attention_bias": False,
        "mlp_bias": False,
    }
    assert {k: config[k] for k in expected} == expected
    assert json.loads((out / "generation_config.json").read_text()) == {
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 0,
    }
    tokenizer_config = json.loads((out / "tokenizer_config.json").read_text())
    assert tokenizer_config["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert tokenizer_config["model_max_length"] == 64 and tokenizer_config["add_bos_token"] is False
    assert json.loads((out / "special_tokens_map.json").read_text()) == {
        "bos_token": "<bos>",
        "eos_token": "<eos>",
        "pad_token": "<pad>",
    }
    assert (out / "tokenizer.json").read_text() == tokenizer.to_str()
    weights = load_file(out / "model.safetensors")
    assert "lm_head.weight" not in weights  # tied: stored once, as Hugging Face does
    assert len(weights) == 1 + 2 * 9 + 1


def test_hf_tokenizer_matches_muomni(make_checkpoint: Callable, tmp_path: Path, tokenizer: Tokenizer) -> None:
    pytest.importorskip("transformers")
    from transformers import AutoTokenizer

    out = export_hf(make_checkpoint(), tmp_path / "hf")
    hf = AutoTokenizer.from_pretrained(out)
    assert hf.is_fast
    assert (hf.bos_token, hf.eos_token, hf.pad_token) == ("<bos>", "<eos>", "<pad>")
    assert (hf.bos_token_id, hf.eos_token_id, hf.pad_token_id) == (1, 2, 0)
    ids = tokenizer.encode(UNICODE_TEXT)
    assert len(ids) < len(UNICODE_TEXT.encode()), "the tokenizer should have merged something"
    assert hf(UNICODE_TEXT)["input_ids"] == ids  # no BOS/EOS added, as muomni encodes
    assert hf.decode(ids) == tokenizer.decode(ids) == UNICODE_TEXT
    with_specials = [1, *ids, 2]
    assert hf.decode(with_specials, skip_special_tokens=True) == UNICODE_TEXT


def test_the_tokenizer_of_a_qwen2_export_loads_as_a_plain_fast_tokenizer(
    make_checkpoint: Callable, tmp_path: Path, tokenizer: Tokenizer
) -> None:
    # transformers 5 loads any qwen2 folder's AutoTokenizer as Qwen2Tokenizer, which brings Qwen's own split
    # pattern and normalizer and so encodes otherwise; the README names this class for these exports.
    transformers = pytest.importorskip("transformers")
    out = export_hf(make_checkpoint(**SHAPES["qwen2-bias"]), tmp_path / "hf")
    hf = transformers.PreTrainedTokenizerFast.from_pretrained(out)
    text = UNICODE_TEXT + "\ndef alpha(beta):\n    return beta"
    assert hf(text)["input_ids"] == tokenizer.encode(text)


def test_export_import_export_is_identical(make_checkpoint: Callable, tmp_path: Path) -> None:
    for shape in ("gqa-tied", "kv1-untied", "qwen2-bias"):
        run = make_checkpoint(name=shape, **SHAPES[shape])
        first = export_hf(run, tmp_path / f"{shape}-1")
        model, tokenizer = load_hf(first)
        second = save_hf(model, tokenizer, tmp_path / f"{shape}-2")
        a, b = load_file(first / "model.safetensors"), load_file(second / "model.safetensors")
        original = load_file(latest_checkpoint(run) / "model.safetensors")
        assert a.keys() == b.keys() == original.keys()
        for name in a:
            assert torch.equal(a[name], b[name]) and torch.equal(a[name], original[name]), name
        for name in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"):
            assert (first / name).read_text() == (second / name).read_text(), name


def test_bf16_checkpoint_exports_as_bf16(tokenizer: Tokenizer, tmp_path: Path) -> None:
    model = random_thinker(tiny_config()).to(torch.bfloat16)
    out = save_hf(model, tokenizer, tmp_path / "hf")
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "bfloat16"
    assert load_file(out / "model.safetensors")["model.norm.weight"].dtype == torch.bfloat16


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"use_moe": True}, "MoE models have no Hugging Face Llama equivalent"),
        ({"use_swiglu": False}, "GELU MLP (use_swiglu=false) have no Hugging Face Llama equivalent"),
    ],
)
def test_refuses_what_llama_cannot_express(
    overrides: dict, message: str, make_checkpoint: Callable, tmp_path: Path
) -> None:
    with pytest.raises(CheckpointError, match=message.replace("(", r"\(").replace(")", r"\)")):
        export_hf(make_checkpoint(**overrides), tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


def test_output_folder_rules(make_checkpoint: Callable, tmp_path: Path) -> None:
    run = make_checkpoint()
    (tmp_path / "empty").mkdir()
    export_hf(run, tmp_path / "empty")  # an empty folder is fine
    export_hf(make_checkpoint(seed=5, name="run2"), tmp_path / "empty")  # a previous export is replaced
    replaced = load_file(tmp_path / "empty" / "model.safetensors")
    fresh = load_file(latest_checkpoint(tmp_path / "run2") / "model.safetensors")
    assert torch.equal(replaced["model.norm.weight"], fresh["model.norm.weight"])

    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    with pytest.raises(CheckpointError, match="is not empty and is not a previous muomni export"):
        export_hf(run, busy)
    assert (busy / "notes.txt").read_text() == "mine"
    # Someone else's Hugging Face folder (same file names, no muomni marker) is not overwritten either.
    (tmp_path / "empty" / "model.safetensors").write_bytes(b"not ours")
    with pytest.raises(CheckpointError, match="not a previous muomni export"):
        export_hf(run, tmp_path / "empty")
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir()), "a temporary folder was left behind"


@pytest.mark.parametrize("out", [".", "..", ""])
def test_an_export_into_the_current_folder_or_one_above_it_is_refused(
    make_checkpoint: Callable, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, out: str
) -> None:
    """An export replaces its folder whole: into "." it left the shell in a deleted folder, where ``ls``
    showed nothing though the export had been written (and "" read as "."). The previous export stays."""
    export_hf(make_checkpoint(), tmp_path / "hf")
    before = load_file(tmp_path / "hf" / "model.safetensors")
    monkeypatch.chdir(tmp_path / "hf")
    with pytest.raises(CheckpointError, match="give --out the path of a new folder$"):
        export_hf(make_checkpoint(seed=5, name="run2"), out)
    after = load_file(tmp_path / "hf" / "model.safetensors")
    assert torch.equal(after["model.norm.weight"], before["model.norm.weight"])


def test_an_export_given_without_hf_prefix_is_named_as_a_hugging_face_folder(
    make_checkpoint: Callable, tmp_path: Path
) -> None:
    """It was called incomplete ("no manifest.json; it was not finished writing"), a false diagnosis."""
    export_hf(make_checkpoint(), tmp_path / "hf")
    with pytest.raises(CheckpointError, match=f"is a Hugging Face model folder; give it as hf:{tmp_path / 'hf'}$"):
        resolve_checkpoint(tmp_path / "hf")


def test_an_output_under_a_file_is_refused_before_anything_is_written(
    make_checkpoint: Callable, tmp_path: Path
) -> None:
    (tmp_path / "afile").write_text("mine")
    with pytest.raises(CheckpointError, match="afile is a file, not a folder; choose another --out"):
        export_hf(make_checkpoint(), tmp_path / "afile" / "hf")
    assert (tmp_path / "afile").read_text() == "mine"


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, cwd=ROOT, env=env, timeout=120, check=False
    )


def test_cli_export(make_checkpoint: Callable, tmp_path: Path) -> None:
    done = _cli("-m", "muomni", "export", "--ckpt", str(make_checkpoint()), "--out", str(tmp_path / "hf"))
    assert done.returncode == 0, done.stderr
    assert "LlamaForCausalLM" in done.stdout and (tmp_path / "hf" / "model.safetensors").is_file()

    done = _cli("-m", "muomni", "export", "--ckpt", str(make_checkpoint(name="moe", use_moe=True)), "--out", "x")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "muomni: error: MoE models have no Hugging Face Llama equivalent; export supports dense models only "
        "(train with use_moe=false to get an exportable model)"
    ]


def test_sigterm_during_an_export_leaves_the_earlier_export_and_no_partial_folder(
    make_checkpoint: Callable, tmp_path: Path
) -> None:
    """SIGTERM ends an export with one line and exit 143, and what it was writing is removed: the signal
    arrives after the new model file is written, before the folder takes the earlier export's place."""
    out = tmp_path / "hf"
    assert _cli("-m", "muomni", "export", "--ckpt", str(make_checkpoint()), "--out", str(out)).returncode == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    args = ["-m", "muomni", "export", "--ckpt", str(make_checkpoint(seed=1, name="other")), "--out", str(out)]
    done = _cli(*args, env={KILL_ENV: "export_write:0:SIGTERM"})
    assert done.returncode == 143, done.stderr
    assert done.stderr.strip().splitlines() == ["muomni: terminated (SIGTERM)"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf", "other", "run"]  # no temporary folder left
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_export_does_not_import_transformers(make_checkpoint: Callable, tmp_path: Path) -> None:
    code = (
        "import sys; from muomni.hf import export_hf; "
        f"export_hf({str(make_checkpoint())!r}, {str(tmp_path / 'hf')!r}); "
        "assert 'transformers' not in sys.modules, 'export imported transformers'"
    )
    done = _cli("-c", code)
    assert done.returncode == 0, done.stderr


# Every special token of muomni's tokenizer, spelled in text, alone and next to other text.
SPECIAL_TEXTS = [
    "x = '<eos>'",
    "<bos>hi<pad><eos>",
    "<eos>",
    "a<eos>b <bos> <pad>",
    "<pad><pad>",
    UNICODE_TEXT + "<eos>",
]


@pytest.mark.parametrize("shape", ["mha-untied", "qwen2-bias"])
def test_hf_tokenizer_encodes_special_token_strings_as_text(
    shape: str, make_checkpoint: Callable, tmp_path: Path, tokenizer: Tokenizer
) -> None:
    # muomni encodes a document that spells "<eos>" as those characters; the export must too, or a model
    # fed through Hugging Face sees an end-of-text id where it was trained on text.
    transformers = pytest.importorskip("transformers")
    out = export_hf(make_checkpoint(**SHAPES[shape]), tmp_path / "hf")
    load = transformers.AutoTokenizer if shape == "mha-untied" else transformers.PreTrainedTokenizerFast
    hf = load.from_pretrained(out)
    for text in SPECIAL_TEXTS:
        ids = tokenizer.encode(text)
        assert {tokenizer.pad_id, tokenizer.bos_id, tokenizer.eos_id}.isdisjoint(ids), text
        assert hf(text)["input_ids"] == hf.encode(text) == ids, text
        assert hf.decode(ids) == text
    # The ids the tokenizer adds itself are still the special ids: left padding with <pad>.
    batch = hf(["<eos> a", "b"], padding=True)["input_ids"]
    short = tokenizer.encode("b")
    assert batch == [tokenizer.encode("<eos> a"), [tokenizer.pad_id] * (len(batch[0]) - len(short)) + short]
    assert hf.convert_ids_to_tokens([0, 1, 2]) == ["<pad>", "<bos>", "<eos>"]


def test_hf_tokenizer_encodes_any_special_token_string_as_text(tmp_path: Path, tokenizer: Tokenizer) -> None:
    # An imported chat model's tokenizer has more special tokens than <pad>/<bos>/<eos>: all stay text.
    transformers = pytest.importorskip("transformers")
    chat = Tokenizer(HFTokenizer.from_str(tokenizer.to_str()))
    chat.hf.add_special_tokens(["<|im_start|>"])
    out = save_hf(random_thinker(tiny_config()), chat, tmp_path / "hf")
    hf = transformers.AutoTokenizer.from_pretrained(out)
    text = "<|im_start|>user\nsay <eos>"
    assert hf(text)["input_ids"] == chat.encode(text)
    assert chat.token_to_id("<|im_start|>") not in chat.encode(text)


def test_a_checkpoint_shared_without_its_optimizer_state_exports_the_same(tokenizer: Tokenizer, tmp_path: Path) -> None:
    # export checked every file of the manifest, and refused "optimizer.safetensors is missing".
    ckpt = save_checkpoint(random_thinker(tiny_config(), 3), tokenizer, tmp_path / "run", optimizer_state=True)
    full = export_hf(ckpt, tmp_path / "full")
    (ckpt / "optimizer.safetensors").unlink()
    for source, out in ((ckpt, "stripped"), (tmp_path / "run", "from_run")):
        exported = export_hf(source, tmp_path / out)
        assert load_file(exported / "model.safetensors").keys() == load_file(full / "model.safetensors").keys()
        for name, tensor in load_file(full / "model.safetensors").items():
            assert torch.equal(load_file(exported / "model.safetensors")[name], tensor)
    data = bytearray((ckpt / "model.safetensors").read_bytes())
    data[-1] ^= 0x40  # a weight's bits: still a readable file of the right shapes
    (ckpt / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="model.safetensors is missing or does not match its checksum"):
        export_hf(ckpt, tmp_path / "changed")
