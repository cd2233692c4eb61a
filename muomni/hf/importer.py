"""Import a local Hugging Face ``LlamaForCausalLM`` or ``Qwen2ForCausalLM`` folder as a Thinker and Tokenizer.

Reads safetensors only (``model.safetensors`` or a sharded ``model.safetensors.index.json``): pickle
``.bin`` files can run code when loaded, so a folder that holds only those is refused. Transformers is
not imported. Every feature the Thinker does not compute (RoPE scaling, sliding windows, biases other
than Qwen2's q/k/v ones, another activation) is refused with a message naming it, so an imported model
is the same function as the original, not an approximation. A Qwen2 model keeps its q/k/v biases
(``qkv_bias``) and every model its RMSNorm eps (``rms_norm_eps``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from tokenizers import Tokenizer as HFTokenizer

from muomni.config import Config, load_config
from muomni.data.tokenizer import Tokenizer, check_vocab
from muomni.errors import CheckpointError, ConfigError
from muomni.hf.mapping import ARCHITECTURES, check_state, model_keys_from_hf
from muomni.paths import HF_PREFIX
from muomni.training.checkpoint import CONFIG_FILE, MANIFEST, MODEL_FILE, STATE_FILE, checkpoints_dir, load_tensors

if TYPE_CHECKING:
    from muomni.models.thinker import Thinker

INDEX_FILE = "model.safetensors.index.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


class HFInit(NamedTuple):
    """A Hugging Face model, ready for the trainer (see :func:`load_for_training`).

    Attributes:
        state: the Thinker state dict; it holds every key of ``Thinker(cfg).state_dict()`` (a tied
            ``lm_head.weight`` is the embedding tensor), so ``model.load_state_dict(state)`` is strict.
            Tensors are on the CPU in their stored dtype; ``load_state_dict`` casts them to the model's.
        tokenizer: the folder's ``tokenizer.json`` with its bos/eos/pad ids.
        overrides: the model keys to apply, all but ``ctx_len``: ``cfg.replace(**overrides)``.
    """

    state: dict[str, torch.Tensor]
    tokenizer: Tokenizer
    overrides: dict[str, Any]


def load_hf(
    path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> tuple[Thinker, Tokenizer]:
    """A Thinker and Tokenizer from a local Hugging Face Llama or Qwen2 folder.

    Args:
        path: the folder, optionally written ``hf:FOLDER``. Nothing is downloaded.
        device: where to put the model.
        dtype: the parameter dtype.

    Returns:
        The model (in eval mode) and its tokenizer. The config's ``ctx_len`` is the model's
        ``max_position_embeddings``.

    Raises:
        CheckpointError: not a supported local folder, pickle-only weights, or a feature muomni lacks.
        DataError: the tokenizer is unreadable or its special ids fall outside its vocabulary.
    """
    from muomni.models.thinker import Thinker

    folder = hf_folder(path)
    hf = read_hf_config(folder)
    cfg = _config(model_keys_from_hf(hf, str(folder)), folder)
    state = load_hf_state(folder, cfg)
    tokenizer = load_hf_tokenizer(folder, hf, cfg.vocab_size)
    model = Thinker(cfg)
    model.load_state_dict(state)
    return model.to(device=device, dtype=dtype).eval(), tokenizer


def load_for_training(path: str | Path, cfg: Config) -> HFInit:
    """What the trainer needs to start from a Hugging Face model (``init_from: "hf:FOLDER"``).

    The model keys (:data:`~muomni.hf.mapping.MODEL_KEYS`) come from the Hugging Face config and every
    training key stays the user's. ``ctx_len`` is the one model key the user keeps, as with a muomni
    checkpoint, even past the model's ``max_position_embeddings``: it only sets the training window and the
    RoPE table length, which RoPE extends (the trainer warns that the model was not trained there). Usage::

        init = load_for_training(cfg.init_from, cfg)
        cfg = cfg.replace(**init.overrides)
        model = Thinker(cfg)
        model.load_state_dict(init.state)
        tokenizer = init.tokenizer

    Args:
        path: the folder, optionally written ``hf:FOLDER``.
        cfg: the user's config.

    Raises:
        CheckpointError, DataError: as for :func:`load_hf`.
    """
    folder = hf_folder(path)
    hf = read_hf_config(folder)
    overrides = model_keys_from_hf(hf, str(folder))
    del overrides["ctx_len"]  # the user's (see above)
    merged = _config({**cfg.to_dict(), **overrides}, folder)
    state = load_hf_state(folder, merged)
    return HFInit(state, load_hf_tokenizer(folder, hf, merged.vocab_size), overrides)


def hf_folder(path: str | Path) -> Path:
    """The local folder of ``path`` (``hf:`` prefix removed); raises CheckpointError when there is none."""
    text = str(path)
    folder = Path(text[len(HF_PREFIX) :] if text.startswith(HF_PREFIX) else text)
    if not folder.is_dir():
        raise CheckpointError(
            f"{folder} is not a local folder; muomni never downloads: fetch the model first "
            f"(e.g. huggingface-cli download NAME --local-dir DIR) and give DIR"
        )
    refuse_muomni_folder(folder)  # else its config.json is read as one without a model_type
    if not (folder / "config.json").is_file():
        raise CheckpointError(f"{folder} has no config.json; give a Hugging Face model folder")
    return folder


def refuse_muomni_folder(folder: Path) -> None:
    """Raise CheckpointError when ``folder``, given as ``hf:``, is a muomni run or checkpoint (see below)."""
    if is_muomni_folder(folder):
        raise CheckpointError(
            f"{folder} is a muomni run (or checkpoint) folder, not a Hugging Face one; give it without {HF_PREFIX}"
        )


def is_muomni_folder(folder: Path) -> bool:
    """Whether ``folder`` is a muomni run (``checkpoints/`` beside its ``config.json``) or one of its checkpoints
    (a ``manifest.json`` or ``trainer_state.json``), whose ``config.json`` names no ``model_type``.

    The ``model_type`` test keeps a Hugging Face folder that holds such a file too (a transformers Trainer
    checkpoint has a ``trainer_state.json``) from being taken for a muomni one.
    """
    run = checkpoints_dir(folder).is_dir() and (folder / CONFIG_FILE).is_file()
    if not (run or (folder / MANIFEST).is_file() or (folder / STATE_FILE).is_file()):
        return False
    return "model_type" not in (_read_json(folder / CONFIG_FILE) or {})


def read_hf_config(folder: Path) -> dict[str, Any]:
    """The parsed ``config.json`` of a Hugging Face folder, its shape keys checked (:func:`_check_numbers`)."""
    path = folder / "config.json"
    data = _read_json(path)
    if data is None:
        raise CheckpointError(f"{folder} has no config.json; give a Hugging Face model folder")
    _check_numbers(data, path)
    return data


# config.json keys the model's shape is read from: integers, required or optional (absent or null: a
# default), and numbers that may be absent but not null.
REQUIRED_INTS = ("hidden_size", "num_attention_heads", "num_hidden_layers", "intermediate_size", "vocab_size")
OPTIONAL_INTS = ("num_key_value_heads", "head_dim", "max_position_embeddings", "max_window_layers")
FLOATS = ("rope_theta", "rms_norm_eps")


def _check_numbers(hf: dict[str, Any], path: Path) -> None:
    """Each shape key of ``hf`` present when required, and a number of the right kind. The mapping converts
    them with ``int()`` and ``float()``, whose own errors read "config.json lacks or has a bad invalid
    literal for int() ..." (for the optional keys: a traceback)."""
    if hf.get("model_type") not in ARCHITECTURES:
        return  # another kind of model, with keys of its own: the mapping refuses it by its model_type
    for key in REQUIRED_INTS:
        if key not in hf:
            raise CheckpointError(f"{path} lacks {key}; it is not a complete model config")
    checks = [(key, True) for key in REQUIRED_INTS]
    checks += [(key, True) for key in OPTIONAL_INTS if hf.get(key) is not None]
    checks += [(key, False) for key in FLOATS if key in hf]
    for key, integer in checks:
        if not _is_number(hf[key], integer):
            kind = "an integer" if integer else "a number"
            raise CheckpointError(f"{path}: {key} must be {kind}, got {json.dumps(hf[key])}")


def _is_number(value: Any, integer: bool) -> bool:
    """A JSON number (true and false are not), integral when ``integer`` (``2048.0`` is)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return not integer or float(value).is_integer()


def load_hf_state(folder: Path, cfg: Config) -> dict[str, torch.Tensor]:
    """The weights of ``folder`` as a strict Thinker state dict (see :attr:`HFInit.state`).

    Hugging Face names are the Thinker's, so the map only drops what carries no information: RoPE
    ``inv_freq`` buffers some old checkpoints saved, and a tied ``lm_head.weight`` (Hugging Face
    overwrites it with the embedding when tying).
    """
    state: dict[str, torch.Tensor] = {}
    for file in _weight_files(folder):
        state.update(load_tensors(file))
    state = {name: t for name, t in state.items() if not name.endswith("rotary_emb.inv_freq")}
    if cfg.tie_embeddings:
        state.pop("lm_head.weight", None)
    check_state(state, cfg, folder)
    if cfg.tie_embeddings:
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    return state


def load_hf_tokenizer(folder: Path, hf: dict[str, Any], vocab_size: int) -> Tokenizer:
    """The folder's ``tokenizer.json`` wrapped with its special ids (see :func:`special_ids`)."""
    path = folder / "tokenizer.json"
    if not path.is_file():
        raise CheckpointError(
            f"{folder} has no tokenizer.json; muomni reads fast-tokenizer files only: write one with "
            f"AutoTokenizer.from_pretrained(SRC).save_pretrained('{folder}')"
        )
    try:
        raw = HFTokenizer.from_file(str(path))
    except Exception as e:  # tokenizers raises a bare Exception for a malformed file
        raise CheckpointError(f"{path} is not a readable tokenizer.json ({str(e).splitlines()[0] if str(e) else e!r})")
    pad_id, bos_id, eos_id = special_ids(folder, hf, raw)
    tokenizer = Tokenizer(raw, pad_id=pad_id, bos_id=bos_id, eos_id=eos_id)
    check_vocab(tokenizer, vocab_size)
    return tokenizer


def special_ids(folder: Path, hf: dict[str, Any], raw: HFTokenizer) -> tuple[int, int, int]:
    """(pad, bos, eos) ids: from ``config.json``, then ``generation_config.json``, then the token names in
    ``tokenizer_config.json``. A list of eos ids (chat models) gives its first. A missing pad or bos is the
    eos token, the GPT-2 / Qwen convention of one end-of-text token for every role.
    """
    sources = [hf, _read_json(folder / "generation_config.json") or {}]
    names = _read_json(folder / "tokenizer_config.json") or {}

    def find(role: str) -> int | None:
        for source in sources:
            value = source.get(f"{role}_token_id")
            if isinstance(value, list):
                value = value[0] if value else None
            if isinstance(value, int) and not isinstance(value, bool):
                return value
        name = names.get(f"{role}_token")
        name = name.get("content") if isinstance(name, dict) else name
        return raw.token_to_id(name) if isinstance(name, str) else None

    eos = find("eos")
    if eos is None:
        raise CheckpointError(
            f"{folder}: no eos token in config.json, generation_config.json or tokenizer_config.json; "
            "muomni needs one to end generation: set eos_token_id in config.json"
        )
    pad, bos = find("pad"), find("bos")
    return (eos if pad is None else pad), (eos if bos is None else bos), eos


def _weight_files(folder: Path) -> list[Path]:
    """The safetensors files of ``folder``; a pickle-only folder is refused."""
    if (folder / MODEL_FILE).is_file():
        return [folder / MODEL_FILE]
    index = _read_json(folder / INDEX_FILE)
    if index is not None:
        weight_map = index.get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError(f"{folder / INDEX_FILE} has no weight_map; the index is corrupt")
        files = []
        for name in sorted(set(weight_map.values())):
            if not isinstance(name, str) or Path(name).name != name:  # a shard must sit in the folder itself
                raise CheckpointError(f"{folder / INDEX_FILE} names shard {name!r} outside the folder")
            if not (folder / name).is_file():
                raise CheckpointError(f"{folder}: shard {name} listed in {INDEX_FILE} is missing")
            files.append(folder / name)
        return files
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise CheckpointError(
            f"{folder} holds only pickle .bin weights ({pickles[0]}), which can run code when loaded; "
            'convert them to safetensors first, e.g. in an environment you trust: python -c "from transformers '
            f"import AutoModelForCausalLM as M; M.from_pretrained('{folder}').save_pretrained('{folder}-st')\""
        )
    raise CheckpointError(f"{folder} holds no {MODEL_FILE} or {INDEX_FILE}; give a Hugging Face model folder")


def _config(keys: dict[str, Any], folder: Path) -> Config:
    """A validated Config; a shape the Thinker cannot take is reported against the Hugging Face folder."""
    try:
        return load_config(keys, warn_ignored=False)
    except ConfigError as e:
        raise CheckpointError(f"{folder}: the model cannot be represented as a muomni Thinker: {e}")


def _read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object file, or None when the file does not exist."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path} is not readable JSON ({e}); the folder may be corrupt")
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} must hold a JSON object")
    return data
