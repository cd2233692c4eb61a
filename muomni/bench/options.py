"""Checks of the options that ``bench``, ``profile`` and ``plan`` share, made before any work starts.

A measurement takes minutes: an ``--out`` that cannot be written, found when the results are, loses it.
So each command checks its options first, and a bad one is a :class:`ConfigError` that says what to do.
"""

from __future__ import annotations

import os
from pathlib import Path

from muomni.errors import ConfigError
from muomni.paths import file_in_the_way, short_listing, writable_folder_error


def bench_out_folder(what: str, out: str | None) -> Path:
    """Where ``bench train|infer`` writes: ``--out``, else ``bench-out/train`` or ``bench-out/infer``."""
    return Path(out or f"bench-out/{what}")


def check_steps(steps: int | None) -> None:
    """``--steps``, when given, is at least 1. Not checked, 0 read as "not given" (or profiled nothing) and
    a negative one was reported as ``max_steps`` or ``max_new_tokens``, keys the user never set."""
    if steps is not None and steps < 1:
        raise ConfigError(f"--steps {steps} must be at least 1")


def check_out_folder(out: Path, writes: frozenset[str]) -> None:
    """``--out`` is a folder or can be made one (the commands make it): neither it nor a parent is a file, a
    file can be made in it, and it holds nothing but what the command writes (``writes``, its names), which
    a run again replaces: a user's own file of the same folder (a run folder, notes) is never written over."""
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
    _check_writable(out, out)


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
