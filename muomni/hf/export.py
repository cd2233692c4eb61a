"""Export a muomni checkpoint as a Hugging Face ``LlamaForCausalLM`` (with q/k/v biases: ``Qwen2ForCausalLM``) folder.

The folder is plain JSON + safetensors written without importing transformers, so ``muomni export``
works with the core dependencies only. It loads with ``AutoModelForCausalLM.from_pretrained(out)`` and
``AutoTokenizer.from_pretrained(out)`` (a fast tokenizer with ``<bos>``, ``<eos>``, ``<pad>`` set) and
computes the same logits as the Thinker (checked to 1e-5 in fp32 by the tests). A Qwen2 folder's tokenizer
loads with ``PreTrainedTokenizerFast.from_pretrained(out)``: transformers 5's ``AutoTokenizer`` gives every
``qwen2`` folder ``Qwen2Tokenizer``, whose own split pattern encodes some text otherwise.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import torch
from safetensors import safe_open

from muomni import __version__
from muomni.config import Config, load_config
from muomni.data.tokenizer import Tokenizer, check_vocab
from muomni.errors import CheckpointError, ConfigError
from muomni.hf.importer import refuse_muomni_folder
from muomni.hf.mapping import check_exportable, check_state, hf_config
from muomni.paths import HF_PREFIX, file_in_the_way, short_listing, writable_folder_error
from muomni.training.checkpoint import (
    CONFIG_FILE,
    MODEL_FILE,
    TOKENIZER_FILE,
    load_tensors,
    model_state_for_saving,
    read_checkpoint,
    save_tensors,
)
from muomni.training.faults import fault_point

if TYPE_CHECKING:
    from muomni.models.thinker import Thinker

_T = TypeVar("_T")

EXPORT_FILES = frozenset(
    {
        "config.json",
        "generation_config.json",
        MODEL_FILE,
        TOKENIZER_FILE,
        "tokenizer_config.json",
        "special_tokens_map.json",
    }
)
# Written into the safetensors metadata, so a later export may replace this folder (and nothing else).
EXPORT_MARKER = "muomni_export"


def export_hf(ckpt_path: str | Path, out_dir: str | Path) -> Path:
    """Write a muomni checkpoint as a Hugging Face ``LlamaForCausalLM`` folder.

    Args:
        ckpt_path: a run folder (its newest complete checkpoint is used) or one checkpoint folder.
        out_dir: the folder to create. It may exist only if it is empty or a previous muomni export,
            which is then replaced whole.

    Returns:
        The folder written.

    Raises:
        CheckpointError: the checkpoint is missing or broken or an ``hf:`` path, is a MoE or GELU model (no
            Llama equivalent), or ``out_dir`` holds other files.
    """

    def read(ckpt: Path) -> tuple[Path, Config, Tokenizer, Path, dict[str, torch.Tensor]]:
        cfg = _checkpoint_config(ckpt)
        check_exportable(cfg)  # before reading the weights: a refusal should be instant
        tokenizer = _checkpoint_tokenizer(ckpt)
        out = _output_folder(out_dir)
        return ckpt, cfg, tokenizer, out, load_tensors(ckpt / MODEL_FILE)

    ckpt, cfg, tokenizer, out, state = _read_source(ckpt_path, read)
    return _write_folder(state, cfg, tokenizer, out, source=str(ckpt))


def save_hf(model: Thinker, tokenizer: Tokenizer, out_dir: str | Path) -> Path:
    """Write an in-memory Thinker and its tokenizer as a ``LlamaForCausalLM`` folder (see :func:`export_hf`)."""
    model = getattr(model, "_orig_mod", model)  # torch.compile's wrapper prefixes every weight name
    check_exportable(model.config)
    out = _output_folder(out_dir)
    return _write_folder(model_state_for_saving(model), model.config, tokenizer, out, source="memory")


def run_export(args: argparse.Namespace) -> int:
    """``muomni export --ckpt DIR --out DIR``."""
    out = export_hf(args.ckpt, args.out)
    with safe_open(str(out / MODEL_FILE), framework="pt") as f:
        n_params = sum(math.prod(f.get_slice(name).get_shape()) for name in f.keys())  # noqa: SIM118 (not a dict)
    architecture = json.loads((out / "config.json").read_text(encoding="utf-8"))["architectures"][0]
    print(f"wrote {out}: {architecture}, {n_params:,} parameters; load it with AutoModelForCausalLM.from_pretrained")
    return 0


def _output_folder(out_dir: str | Path) -> Path:
    """``out_dir``, absolute and checked (:func:`_check_out_dir`) before the weights are read or written.

    Absolute: the temporary folder is the output's sibling, and "." has no name (its sibling would be
    inside it, and go with the old export).
    """
    if not str(out_dir).strip():
        raise CheckpointError("the output folder's name is empty; give --out the path of a new folder")
    out = Path(out_dir).resolve()
    if Path.cwd().is_relative_to(out):  # replaced whole, it would leave the shell in a deleted folder
        raise CheckpointError(f"output {out} is the current folder or holds it; give --out the path of a new folder")
    _check_out_dir(out)
    return out


def _write_folder(state: dict[str, torch.Tensor], cfg: Config, tokenizer: Tokenizer, out: Path, source: str) -> Path:
    """Check, then write every file into a temporary sibling folder of ``out`` (from :func:`_output_folder`)
    and rename it into place."""
    if cfg.tie_embeddings:  # Hugging Face stores a tied head once, as the embedding
        state = {name: t for name, t in state.items() if name != "lm_head.weight"}
    check_state(state, cfg, source)
    check_vocab(tokenizer, cfg.vocab_size)
    dtype = state["model.embed_tokens.weight"].dtype
    ids = {"bos_token_id": tokenizer.bos_id, "eos_token_id": tokenizer.eos_id, "pad_token_id": tokenizer.pad_id}
    config = hf_config(cfg, tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id, dtype)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        save_tensors(state, tmp / MODEL_FILE, metadata={"format": "pt", EXPORT_MARKER: __version__})
        fault_point("export_write", 0)
        _write_json(tmp / "config.json", config)
        _write_json(tmp / "generation_config.json", ids)
        (tmp / TOKENIZER_FILE).write_text(tokenizer.to_str(), encoding="utf-8")
        special = _special_tokens(tokenizer)
        _write_json(tmp / "special_tokens_map.json", special)
        _write_json(tmp / "tokenizer_config.json", _tokenizer_config(special, cfg.ctx_len))
        if out.exists():  # empty, or a previous export (checked above): replaced whole
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _read_source(ckpt_path: str | Path, read: Callable[[Path], _T]) -> _T:
    """``read`` of the checkpoint folder of ``ckpt_path`` (see :func:`read_checkpoint`: only the files an
    export reads are checked, and a run folder's checkpoint pruned meanwhile is chosen again); an ``hf:`` path
    is refused by what it is, rather than reported missing as a folder named ``hf:...``."""
    text = str(ckpt_path)
    if not text.startswith(HF_PREFIX):
        return read_checkpoint(ckpt_path, read, hf_folder="export takes a muomni run or checkpoint folder")
    folder = Path(text.removeprefix(HF_PREFIX))
    refuse_muomni_folder(folder)
    what = "a Hugging Face folder already" if folder.is_dir() else f"an {HF_PREFIX} path"
    raise CheckpointError(f"--ckpt {text} is {what}; export takes a muomni run or checkpoint folder")


def _checkpoint_config(ckpt: Path) -> Config:
    try:
        return load_config(ckpt / CONFIG_FILE, warn_ignored=False)
    except ConfigError as e:
        raise CheckpointError(f"checkpoint {ckpt}: {e}")


def _checkpoint_tokenizer(ckpt: Path) -> Tokenizer:
    """The checkpoint's ``tokenizer.json``, else its run folder's (two levels up), as :func:`muomni.load` does."""
    for path in (ckpt / TOKENIZER_FILE, ckpt.parent.parent / TOKENIZER_FILE):
        if path.is_file():
            return Tokenizer.load(path)
    raise CheckpointError(
        f"checkpoint {ckpt} has no {TOKENIZER_FILE}; export needs the tokenizer the model was trained with"
    )


def _special_tokens(tokenizer: Tokenizer) -> dict[str, str]:
    """The special tokens by role, as strings (Hugging Face tokenizers name them, not number them)."""
    roles = {"bos_token": tokenizer.bos_id, "eos_token": tokenizer.eos_id, "pad_token": tokenizer.pad_id}
    return {role: str(tokenizer.id_to_token(token_id)) for role, token_id in roles.items()}


def _tokenizer_config(special: dict[str, str], ctx_len: int) -> dict[str, Any]:
    """A ``PreTrainedTokenizerFast`` over ``tokenizer.json`` that encodes exactly as muomni does.

    muomni adds no special tokens when encoding, and decoding must round-trip byte-exactly, so BOS/EOS
    insertion and the legacy clean-up of spaces before punctuation are off. Text that spells a special token
    (``"<eos>"`` in a document) is encoded as plain text, as muomni's tokenizer does: ``split_special_tokens``
    (honoured by fast tokenizers since transformers 4.45 at least, and kept by ``save_pretrained``). Left
    padding matches how muomni batches prompts for generation.
    """
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **special,
        "model_max_length": ctx_len,
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "split_special_tokens": True,
        "padding_side": "left",
    }


def _check_out_dir(out: Path) -> None:
    """Refuse to write over anything but an empty folder or a previous muomni export, and a folder that
    cannot be made (a file in the way, or a parent folder where nothing can be written)."""
    blocking = file_in_the_way(out)
    if blocking is not None and blocking != out:
        raise CheckpointError(f"output {out} cannot be made: {blocking} is a file, not a folder; choose another --out")
    # The export is written beside the output, then renamed: its parent is where a folder must be made.
    why = writable_folder_error(out.parent)
    if why is not None:
        raise CheckpointError(f"output {out} cannot be written ({why} in {out.parent}); choose another --out")
    if not out.exists():
        return
    if not out.is_dir():
        raise CheckpointError(f"output {out} exists and is not a folder; choose another --out")
    names = {p.name for p in out.iterdir()}
    if not names or (names <= EXPORT_FILES and _is_export(out / MODEL_FILE)):
        return
    if _is_export(out / MODEL_FILE):  # replacing the export whole would delete the user's own files
        raise CheckpointError(
            f"output folder {out} holds files a muomni export does not write ({short_listing(names - EXPORT_FILES)}); "
            "move them away or choose a new folder"
        )
    raise CheckpointError(
        f"output folder {out} is not empty and is not a previous muomni export; choose a new folder or empty it"
    )


def _is_export(weights: Path) -> bool:
    try:
        with safe_open(str(weights), framework="pt") as f:
            return EXPORT_MARKER in (f.metadata() or {})
    except Exception:  # missing or unreadable: not ours
        return False


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
