"""Checkpoints on disk: atomic, checksummed, and free of pickle.

A checkpoint is a folder ``<save_dir>/checkpoints/step_NNNNNNNN/`` holding ``model.safetensors``,
``optimizer.safetensors``, ``rng.safetensors``, ``trainer_state.json``, ``config.json``, ``tokenizer.json``
and, written last, ``manifest.json`` with the size and sha256 of every other file. It is written into a
temporary folder, each file fsynced, then renamed into place: a crash leaves either the whole checkpoint
or none, and a folder whose manifest is missing or disagrees with its files is never loaded. A checkpoint of
a step that already has one (a resumed run's last) is swapped with the old in one rename where the system
can (Linux's ``renameat2``), so that no moment leaves that step without a whole checkpoint.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import hashlib
import json
import os
import re
import shutil
import sys
import warnings
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from muomni.config import Config, load_config
from muomni.errors import CheckpointError, ConfigError
from muomni.paths import HF_PREFIX
from muomni.training.faults import fault_point

MANIFEST = "manifest.json"
MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
STATE_FILE = "trainer_state.json"
CONFIG_FILE = "config.json"
TOKENIZER_FILE = "tokenizer.json"
_STEP_DIR = re.compile(r"^step_(\d{8,})$")
# What loading a model for generation or export reads; the optimizer, RNG and trainer state are for resuming.
INFERENCE_FILES = frozenset({MODEL_FILE, CONFIG_FILE, TOKENIZER_FILE})
# How often a run folder's newest checkpoint is chosen again when a run deletes it while it is read.
READ_ATTEMPTS = 3
_T = TypeVar("_T")


def _umasked_file_mode() -> int:
    """The mode ``open`` gives a new file under this process's umask (read by setting it: once, at import)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


_FILE_MODE = _umasked_file_mode()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def checkpoints_dir(save_dir: str | Path) -> Path:
    return Path(save_dir) / "checkpoints"


def step_dir_name(step: int) -> str:
    return f"step_{step:08d}"


def write_checkpoint(save_dir: str | Path, step: int, writers: dict[str, Callable[[Path], None]]) -> Path:
    """Write one checkpoint atomically.

    Args:
        save_dir: the run folder.
        step: the optimizer step the checkpoint holds; it names the folder.
        writers: file name -> function that writes that file at the path it is given.

    Returns:
        The final checkpoint folder.
    """
    root = checkpoints_dir(save_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / step_dir_name(step)
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        _write_files(tmp, step, writers)
    except BaseException:  # a full disk, say: what was written of it is no checkpoint and holds the space
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():  # a checkpoint of the same step (a resumed run's end) is replaced whole
        _replace_folder(tmp, final, step)
    else:
        os.replace(tmp, final)
    _fsync(root)
    return final


def _write_files(folder: Path, step: int, writers: dict[str, Callable[[Path], None]]) -> None:
    """Each writer's file in ``folder``, synced, then the manifest of their sizes and checksums."""
    entries = {}
    for name, write in writers.items():
        path = folder / name
        write(path)
        _fsync(path)
        entries[name] = {"bytes": path.stat().st_size, "sha256": sha256_file(path)}
    manifest = folder / MANIFEST
    manifest.write_text(json.dumps({"step": step, "files": entries}, indent=2) + "\n", encoding="utf-8")
    _fsync(manifest)


def _replace_folder(new: Path, old: Path, step: int) -> None:
    """Put folder ``new`` at ``old``'s path, ``old``'s files deleted after.

    Where the system swaps two paths in one rename, ``old``'s path holds one whole folder or the other at
    every moment. Elsewhere the old folder is first renamed aside, which leaves a moment without it (a crash
    there keeps it as ``.old-...``, still whole, for the user to rename back).
    """
    if _swap_paths(new, old):
        fault_point("ckpt_replace", step)
        shutil.rmtree(new)  # now the old checkpoint
        return
    aside = old.with_name(f".old-{old.name}-{os.getpid()}")
    os.replace(old, aside)
    fault_point("ckpt_replace", step)
    os.replace(new, old)
    shutil.rmtree(aside)


_AT_FDCWD = -100
_RENAME_EXCHANGE = 2  # linux/fs.h


def _swap_paths(a: Path, b: Path) -> bool:
    """Exchange two existing paths atomically (Linux ``renameat2(RENAME_EXCHANGE)``); False where this
    system or file system cannot, so that the caller replaces them another way."""
    if not sys.platform.startswith("linux"):
        return False
    renameat2 = getattr(ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True), "renameat2", None)
    if renameat2 is None:  # glibc before 2.28, or another libc without the wrapper
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):  # a file system without the flag
        return False
    raise OSError(err, os.strerror(err), str(b))


def verify(ckpt: Path, files: Collection[str] | None = None) -> dict[str, Any]:
    """Return the manifest of a complete checkpoint, or raise CheckpointError saying what is wrong.

    ``files``: the names whose size and checksum are checked (None: all the manifest lists). Loading a model
    reads only :data:`INFERENCE_FILES`, so a model shared without the state only resuming reads still loads.
    """
    manifest = _read_manifest(ckpt)
    for name, entry in manifest["files"].items():
        if (files is None or name in files) and not _file_matches(ckpt / name, entry):
            raise CheckpointError(f"checkpoint {ckpt}: {name} is missing or does not match its checksum")
    return manifest


def _read_manifest(ckpt: Path) -> dict[str, Any]:
    manifest_path = ckpt / MANIFEST
    if not manifest_path.is_file():
        raise CheckpointError(f"checkpoint {ckpt} is incomplete (no {MANIFEST}); it was not finished writing")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        files = manifest["files"]
        # Valid JSON of another shape (hand-edited, or another tool's file) is as corrupt as a torn write.
        if not all(isinstance(e, dict) and isinstance(e.get("bytes"), int) and "sha256" in e for e in files.values()):
            raise TypeError
    except (OSError, json.JSONDecodeError, KeyError, TypeError, AttributeError, UnicodeDecodeError, RecursionError):
        raise CheckpointError(f"checkpoint {ckpt} has a corrupt {MANIFEST}")
    return manifest


def _file_matches(path: Path, entry: dict[str, Any]) -> bool:
    try:
        return path.is_file() and path.stat().st_size == entry["bytes"] and sha256_file(path) == entry["sha256"]
    except OSError:  # deleted while it was read (a run pruning its checkpoint), or unreadable
        return False


def list_checkpoints(save_dir: str | Path) -> list[Path]:
    """Checkpoint folders of a run, oldest first (complete or not)."""
    root = checkpoints_dir(save_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _STEP_DIR.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(save_dir: str | Path, files: Collection[str] | None = None) -> Path | None:
    """The newest complete checkpoint of a run; broken newer ones are skipped with a warning naming them.

    ``files``: as for :func:`verify`. A training run deletes old checkpoints (``keep_checkpoints``) after it
    writes a new one, so one deleted while it was checked is no broken one: the folder is listed again.
    """
    _warn_set_aside(save_dir)
    for _ in range(READ_ATTEMPTS):
        listed = list_checkpoints(save_dir)
        ckpt, skipped = _newest_complete(listed, files)
        if not skipped or list_checkpoints(save_dir) == listed:
            break
    for error in skipped:
        warnings.warn(f"skipping checkpoint: {error}", stacklevel=2)
    return ckpt


def _newest_complete(listed: list[Path], files: Collection[str] | None) -> tuple[Path | None, list[CheckpointError]]:
    """The newest of ``listed`` that verifies, and the errors of the newer ones that did not."""
    skipped = []
    for ckpt in reversed(listed):
        try:
            verify(ckpt, files)
            return ckpt, skipped
        except CheckpointError as e:
            skipped.append(e)
    return None, skipped


def _warn_set_aside(save_dir: str | Path) -> None:
    """Name each step whose only copy is one that ``_replace_folder`` set aside (``.old-step_N-PID``: cut
    between its two renames, on a system that cannot swap two paths), which would otherwise go unseen."""
    root = checkpoints_dir(save_dir)
    for aside in sorted(root.glob(".old-step_*")) if root.is_dir() else []:
        step_name = aside.name[len(".old-") :].rsplit("-", 1)[0]
        if _STEP_DIR.match(step_name) and not (root / step_name).exists():
            warnings.warn(
                f"{aside} is a whole checkpoint set aside while its step was rewritten, and {step_name} is "
                f"missing: rename it to {root / step_name} to resume from it",
                stacklevel=3,
            )


def prune_checkpoints(save_dir: str | Path, keep: int) -> None:
    """Delete all but the newest ``keep`` checkpoints, and temporary folders left by a crash."""
    for ckpt in list_checkpoints(save_dir)[:-keep]:
        shutil.rmtree(ckpt, ignore_errors=True)
    for tmp in checkpoints_dir(save_dir).glob(".tmp-*"):  # never .old-*: that may be a step's only copy
        if not tmp.name.endswith(f"-{os.getpid()}"):
            shutil.rmtree(tmp, ignore_errors=True)


def read_config(ckpt: Path) -> Config:
    """The resolved config a checkpoint was saved with.

    Raises:
        CheckpointError: ``config.json`` is missing, not JSON, not a JSON object, or holds a bad config.
    """
    path = ckpt / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"checkpoint {ckpt} has no {CONFIG_FILE}; it is not a muomni checkpoint")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError, RecursionError):  # nested past the parser's depth
        raise CheckpointError(f"{path} is not valid JSON; the checkpoint is corrupt")
    if not isinstance(data, dict):  # load_config would read a string or list as the path of a config file
        raise CheckpointError(f"{path} holds no JSON object of config keys; the checkpoint is corrupt")
    try:
        return load_config(data, warn_ignored=False)
    except ConfigError as e:
        raise CheckpointError(f"{path}: {e}")


def resolve_checkpoint(path: str | Path, hf_folder: str | None = None, files: Collection[str] | None = None) -> Path:
    """A checkpoint folder from ``--ckpt``: a run's save_dir (its newest complete checkpoint) or one folder.

    ``hf_folder``: what to do with a Hugging Face model folder, where the caller takes none (default: give
    it as ``hf:PATH``, which loading and ``init_from`` take). ``files``: those the caller reads, the only
    ones checked (see :func:`verify`); None: all, as resuming needs.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint path {path} does not exist; give a run folder or a checkpoint folder")
    if not path.is_dir():
        raise CheckpointError(f"checkpoint path {path} is a file; give a run folder or a checkpoint folder")
    if not (path / MANIFEST).exists() and _is_hf_folder(path):  # an export, or a model downloaded from the Hub
        raise CheckpointError(f"{path} is a Hugging Face model folder; {hf_folder or f'give it as {HF_PREFIX}{path}'}")
    if (path / MANIFEST).exists() or (path / MODEL_FILE).exists():
        try:
            verify(path, files)
        except CheckpointError as e:
            if not path.is_dir():
                raise CheckpointError(f"checkpoint {path} was removed while being read{_run_hint(path)}")
            if path.parent.name != "checkpoints":
                raise
            # A run folder falls back to its newest intact checkpoint by itself.
            raise CheckpointError(f"{e}; give the run folder {path.parent.parent} to use its newest intact one")
        return path
    ckpt = latest_checkpoint(path, files)
    if ckpt is None:
        if path.name == "checkpoints" and (path.parent / CONFIG_FILE).is_file():
            raise CheckpointError(f"{path} is a run's checkpoints folder; give the run folder {path.parent}")
        train = f"(muomni train save_dir={path})"
        broken = len(list_checkpoints(path))
        if broken:  # each was named in a warning by latest_checkpoint
            raise CheckpointError(f"{path} holds no complete checkpoint: all {broken} are broken; train again {train}")
        raise CheckpointError(f"{path} holds no complete checkpoint; train first {train}")
    return ckpt


def read_checkpoint(
    path: str | Path, read: Callable[[Path], _T], files: Collection[str] = INFERENCE_FILES, hf_folder: str | None = None
) -> _T:
    """``read(ckpt)`` of the checkpoint folder ``path`` resolves to (see :func:`resolve_checkpoint`).

    A training run deletes old checkpoints as it writes new ones (``keep_checkpoints``), so a run folder's
    newest may go while it is read: then the newest complete one is chosen again, a few times at most.
    ``read`` reads ``files`` of the folder, and raises CheckpointError where it cannot.
    """
    for _ in range(READ_ATTEMPTS):
        ckpt = resolve_checkpoint(path, hf_folder, files)
        try:
            return read(ckpt)
        except CheckpointError:
            if not _removed(ckpt, files):
                raise
            if ckpt == Path(path):  # the folder the user named: there is no other to choose
                raise CheckpointError(f"checkpoint {ckpt} was removed while being read{_run_hint(ckpt)}")
    raise CheckpointError(
        f"the newest checkpoint of {path} was removed while being read, {READ_ATTEMPTS} times: its training run "
        "deletes them faster than they load; copy one checkpoint folder out of the run and give that"
    )


def _removed(ckpt: Path, files: Collection[str]) -> bool:
    """Whether checkpoint ``ckpt``, complete when it was chosen, has since lost its manifest or one of
    ``files`` that the manifest lists: a run pruning it, whose files go one by one before the folder."""
    try:
        listed = _read_manifest(ckpt)["files"]
    except CheckpointError:
        return not (ckpt / MANIFEST).is_file()
    return any(not (ckpt / name).is_file() for name in listed if name in files)


def _run_hint(ckpt: Path) -> str:
    if ckpt.parent.name != "checkpoints":
        return ""
    return f"; give the run folder {ckpt.parent.parent} to use its newest complete checkpoint"


def _is_hf_folder(path: Path) -> bool:
    """Whether ``path`` holds a Hugging Face model's ``config.json`` (it names a ``model_type``; muomni's
    config does not)."""
    try:
        data = json.loads((path / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return False
    return isinstance(data, dict) and "model_type" in data


def save_tensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    """safetensors needs contiguous, unshared tensors: copy views and tied weights once."""
    seen: dict[int, str] = {}
    clean = {}
    for name, t in tensors.items():
        t = t.detach()
        key = t.untyped_storage().data_ptr() if t.numel() else id(t)
        clean[name] = t.clone().contiguous() if key in seen or not t.is_contiguous() else t
        seen.setdefault(key, name)
    try:
        save_file({k: v.cpu() for k, v in clean.items()}, str(path), metadata=metadata)
    except SafetensorError as e:  # its I/O errors name the system's error only in the text: "(os error 28)"
        code = re.search(r"os error (\d+)", str(e))
        if code is None:
            raise
        raise OSError(int(code.group(1)), os.strerror(int(code.group(1))), str(path)) from e
    os.chmod(path, _FILE_MODE)  # safetensors makes its files owner-only; an export is for others to read too


def load_tensors(path: Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path), device=str(device))
    except Exception as e:  # safetensors raises several types for a truncated or foreign file
        raise CheckpointError(f"{path} is not a readable safetensors file ({type(e).__name__}); it may be corrupt")


def model_state_for_saving(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict without the tied ``lm_head.weight`` (it is the embedding)."""
    state = model.state_dict()
    if getattr(getattr(model, "config", None), "tie_embeddings", False):
        state.pop("lm_head.weight", None)
    return state
