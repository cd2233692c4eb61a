"""Wrong arguments to the Python API (``muomni.load``, ``muomni.generate``) and a checkpoint whose config.json
disagrees with its weights: an InputError or CheckpointError that says what to pass, never a torch error."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from inference_helpers import run_cli

import muomni
from muomni.data import Tokenizer
from muomni.errors import CheckpointError, InputError
from muomni.inference import loading
from muomni.models.thinker import Thinker
from muomni.training.checkpoint import CONFIG_FILE, MANIFEST, list_checkpoints


@pytest.mark.parametrize("device", ["tpu", "cuda:x", "gpu0", 3])
def test_load_refuses_a_device_that_is_not_cpu_or_cuda(run_dir: Path, device: object) -> None:
    with pytest.raises(InputError, match=r"device .* is not one of auto, cpu, cuda or cuda:N"):
        muomni.load(run_dir, device=device)


def test_load_takes_cpu_spelled_any_way(run_dir: Path) -> None:
    for device in ("cpu", "cpu:0", torch.device("cpu")):
        model, _ = muomni.load(run_dir, device=device)
        assert model.lm_head.weight.device.type == "cpu"


@pytest.fixture
def loaded(run_dir: Path) -> tuple[Thinker, Tokenizer]:
    return muomni.load(run_dir, device="cpu")


@pytest.mark.parametrize("max_new_tokens", [2.5, "3", True, None])
def test_max_new_tokens_must_be_an_int(loaded: tuple, max_new_tokens: object) -> None:
    model, tokenizer = loaded
    with pytest.raises(InputError, match=f"max_new_tokens must be an int, not {type(max_new_tokens).__name__}"):
        muomni.generate(model, tokenizer, "def ", max_new_tokens=max_new_tokens)


def test_a_numpy_int_is_an_int(loaded: tuple) -> None:
    np = pytest.importorskip("numpy")
    model, tokenizer = loaded
    out = muomni.generate(model, tokenizer, "def ", max_new_tokens=np.int64(2), temperature=0.0)
    assert out == muomni.generate(model, tokenizer, "def ", max_new_tokens=2, temperature=0.0)


@pytest.mark.parametrize(
    ("prompts", "message"),
    [
        (b"def ", "prompts must be str, not bytes: decode them to str first"),
        ([b"def "], "prompts must be str, not bytes: decode them to str first"),
        (["def ", 3], "prompts must be str, not int"),
        (None, "prompts must be str, not NoneType"),
    ],
)
def test_prompts_must_be_str(loaded: tuple, prompts: object, message: str) -> None:
    model, tokenizer = loaded
    with pytest.raises(InputError, match=message):
        muomni.generate(model, tokenizer, prompts, max_new_tokens=2)


def test_a_tuple_of_prompts_is_a_batch(loaded: tuple) -> None:
    model, tokenizer = loaded
    assert len(muomni.generate(model, tokenizer, ("def ", "import "), max_new_tokens=2, temperature=0.0)) == 2


def _set_config(run_dir: Path, **changes: object) -> Path:
    """Change the checkpoint's config.json and rehash its manifest entry, so only the shapes disagree."""
    (ckpt,) = list_checkpoints(run_dir)
    path = ckpt / CONFIG_FILE
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))
    manifest = json.loads((ckpt / MANIFEST).read_text())
    data = path.read_bytes()
    manifest["files"][CONFIG_FILE] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (ckpt / MANIFEST).write_text(json.dumps(manifest))
    return ckpt


def test_an_absurd_vocab_size_in_a_checkpoint_is_one_line(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _set_config(run_dir, vocab_size=2_000_000_000)
    code, _, err = run_cli(capsys, "generate", "--ckpt", str(run_dir), "--prompt", "def ", "--device", "cpu")
    assert code == 2 and err.count("\n") == 1, err
    assert "config key 'vocab_size': 2000000000 is invalid: must be at most 1,048,576" in err


def test_shapes_are_compared_before_the_model_is_built(run_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A vocab_size the limits allow but the weights do not have: refused before a model of that size exists."""
    ckpt = _set_config(run_dir, vocab_size=1_000_000)
    built_on: list[str] = []
    real = loading.Thinker

    def recording(cfg: object) -> object:
        built_on.append(torch.empty(0).device.type)  # the default device inside `with torch.device(...)`
        return real(cfg)

    monkeypatch.setattr(loading, "Thinker", recording)
    with pytest.raises(CheckpointError, match=f"checkpoint {ckpt}: .* has shape \\[300, 32\\] but its config.json"):
        muomni.load(run_dir, device="cpu")
    assert built_on == ["meta"]


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("temperature", "0.8", "temperature must be a number, not str '0.8'"),
        ("top_p", "0.9", "top_p must be a number, not str '0.9'"),
        ("top_p", None, "top_p must be a number, not NoneType None"),
        ("seed", "1", "seed must be an int, not str '1'"),
        ("seed", 1.5, "seed must be an int, not float 1.5"),
    ],
)
def test_sampling_options_of_the_wrong_type_are_input_errors(
    loaded: tuple, option: str, value: object, message: str
) -> None:
    # From Python these failed in a comparison or in torch's manual_seed with a TypeError.
    model, tokenizer = loaded
    with pytest.raises(InputError, match=message.replace("(", r"\(")):
        muomni.generate(model, tokenizer, "def ", max_new_tokens=2, **{option: value})


def test_a_checkpoint_config_nested_past_the_parsers_depth_is_corrupt(run_dir: Path) -> None:
    ckpt = list_checkpoints(run_dir)[-1]
    from muomni.training.checkpoint import read_config

    (ckpt / CONFIG_FILE).write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(CheckpointError, match="config.json is not valid JSON; the checkpoint is corrupt"):
        read_config(ckpt)
