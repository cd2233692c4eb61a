"""Folders a command will write to, checked before it starts work that a bad path would then lose."""

from __future__ import annotations

import contextlib
import itertools
import os
import tempfile
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


def writable_folder_error(folder: Path) -> str | None:
    """Why no file can be written in ``folder`` (the operating system's words), or None when one can.

    Tried, not asked: ``os.access`` answers yes to root everywhere, ``/proc`` included, where the write then
    fails after the work. The folder and its missing parents are made for the try and removed again, so the
    check leaves nothing behind: it may run before a config is loaded, and a bad key must leave no folder.
    """
    folder = folder.absolute()
    missing = list(itertools.takewhile(lambda p: not p.exists(), (folder, *folder.parents)))
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".muomni-write-check-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        return e.strerror or str(e)
    finally:
        for made in missing:  # deepest first; rmdir removes only an empty folder, so nothing of anyone's
            with contextlib.suppress(OSError):
                made.rmdir()
    return None


def short_listing(names: set[str], most: int = 3) -> str:
    """The first ``most`` of ``names`` in order, then "..." for the rest: a message stays one short line."""
    shown = sorted(names)[:most]
    return ", ".join(shown + (["..."] if len(names) > most else []))
