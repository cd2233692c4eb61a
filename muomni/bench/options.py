"""Checks of the options that ``bench``, ``profile`` and ``plan`` share, made before any work starts.

A measurement takes minutes: an ``--out`` that cannot be written, found when the results are, loses it.
So each command checks its options first, and a bad one is a :class:`ConfigError` that says what to do.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from muomni.config_files import overrides_dict
from muomni.errors import ConfigError
from muomni.paths import file_in_the_way, short_listing, writable_folder_error

# A command's marker file is a few KB (bench's results.json: tens); a user's file of the same name is not
# read whole to find out that it is not one.
MARKER_MAX_BYTES = 1 << 24


def bench_out_folder(what: str, out: str | None) -> Path:
    """Where ``bench train|infer`` writes: ``--out``, else ``bench-out/train`` or ``bench-out/infer``."""
    return Path(out or f"bench-out/{what}")


def check_steps(steps: int | None) -> None:
    """``--steps``, when given, is at least 1. Not checked, 0 read as "not given" (or profiled nothing) and
    a negative one was reported as ``max_steps`` or ``max_new_tokens``, keys the user never set."""
    if steps is not None and steps < 1:
        raise ConfigError(f"--steps {steps} must be at least 1")


def check_out_folder(out: Path, writes: frozenset[str], wrote_before: Callable[[Path], bool]) -> None:
    """``--out`` is a folder or can be made one (the commands make it): neither it nor a parent is a file, a
    file can be made in it, and it holds nothing but what the command writes (``writes``, its names) and
    wrote there itself (``wrote_before(out)``: its marker file there is its own), which a run again replaces:
    a user's own file of the same folder (a run folder, notes) or of the same name is never written over."""
    blocking = file_in_the_way(out)
    if blocking == out:
        raise ConfigError(f"--out {out} is a file, not a folder: give a folder (it is made if missing)")
    if blocking is not None:
        raise ConfigError(f"--out {out} cannot be made: {blocking} is a file, not a folder")
    if out.is_dir() and (foreign := {p.name for p in out.iterdir()} - writes):
        raise ConfigError(
            f"--out {out} holds files this command does not write ({short_listing(foreign)}); give a new or "
            "empty folder, or one it wrote before"
        )
    # Names alone are not enough: a user's results.md or trace_train.json was replaced without a word.
    if out.is_dir() and (held := {p.name for p in out.iterdir()}) and not wrote_before(out):
        raise ConfigError(
            f"--out {out} holds {short_listing(held)}, which this command did not write there; give a new or "
            "empty folder"
        )
    _check_writable(out, out)


def json_object(path: Path) -> dict[str, Any] | None:
    """The JSON object in the file ``path``, or None where there is none: no such file, not text, not JSON,
    not an object, nested past the parser's depth, or larger than any marker file a command writes."""
    try:
        if not path.is_file() or path.stat().st_size > MARKER_MAX_BYTES:
            return None
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


def warn_set_here(overrides: list[str], set_here: dict[str, str]) -> None:
    """One warning for each key given on the command line that the command sets itself or does not use
    (``set_here``: each such key, with the rest of the sentence saying what the command does instead).

    Such a key (``max_steps=1000``, ``save_dir=...``) went without a word. Only the command line's keys:
    those of ``--config`` (a preset's ``max_steps``) come with the file, not as the user's wish for this run.
    """
    for key in sorted(overrides_dict(overrides).keys() & set_here.keys()):
        warnings.warn(f"config key '{key}' {set_here[key]}", UserWarning, stacklevel=2)


def check_out_file(out: Path) -> None:
    """``--out`` can be written as a file: it is not a folder, its folder exists or can be made, and a file
    can be made there (an existing one: opened for writing)."""
    if out.is_dir():
        raise ConfigError(f"--out {out} is a folder: give the path of a file, e.g. {out / 'planned.json'}")
    blocking = file_in_the_way(out.parent)
    if blocking is not None:
        raise ConfigError(f"--out {out} cannot be written: {blocking} is a file, not a folder")
    _check_writable(out, out.parent)
    if out.is_file():  # written over in place: the file itself must open for writing, not only its folder
        try:
            os.close(os.open(out, os.O_WRONLY))  # no O_TRUNC: the check changes nothing
        except OSError as e:
            raise ConfigError(f"--out {out} cannot be written ({e.strerror}); give a file you can write")


def _check_writable(out: Path, folder: Path) -> None:
    """A file can be made in ``folder``, found by making one (see :func:`writable_folder_error`)."""
    why = writable_folder_error(folder)
    if why is not None:
        raise ConfigError(f"--out {out} cannot be written ({why}); give a path you can write to")
