"""Folders a command will write to, checked before it starts work that a bad path would then lose."""

from __future__ import annotations

from pathlib import Path

# ``hf:FOLDER``: a Hugging Face model folder, where a muomni run or checkpoint folder could also be given.
HF_PREFIX = "hf:"


def nearest_existing(path: Path) -> Path:
    """``path`` itself, or the nearest of its parents that exists (the root always does)."""
    return next(p for p in (path, *path.absolute().parents) if p.exists())


def file_in_the_way(folder: Path) -> Path | None:
    """What stops ``folder`` from being made with ``mkdir(parents=True)``: the nearest of it and its parents
    that exists, when that is a file (None: nothing does)."""
    existing = nearest_existing(folder)
    return None if existing.is_dir() else existing
