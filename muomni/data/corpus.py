"""Read a training corpus as a list of documents.

A *document* is the unit of the train/validation split: a whole document goes to one side, so the
validation loss is measured on text the model never trained on. Sources:

- ``builtin:stdlib``: every ``.py`` file of this Python's standard library (tests, IDLE, tkinter and
  other demos/vendored parts skipped) plus each ``pydoc`` help topic. Needs no download.
- a folder: every regular file under it (recursively, sorted by path, hidden names skipped), one
  document per file, each line of a ``.jsonl`` one; a ``.json`` file in it is refused, as on its own.
- a ``.jsonl`` file: one JSON object per non-empty line, its string field ``text`` is a document.
- a ``.json`` file: refused, to be converted to ``.jsonl`` (read as text it would train on JSON's syntax).
- any other file (``.txt``...): documents are its blank-line-separated blocks.

Documents that hold only whitespace are dropped everywhere: they carry nothing to learn.

Encoding: input must be UTF-8. A file with a few bad bytes (a stray Latin-1 character, a truncated
write) is still usable, so bad bytes are replaced with U+FFFD and one warning per file says how many.
A file where more than 1% of the bytes are not UTF-8 is almost surely binary or in another encoding;
training on it would teach noise, so it is refused with a :class:`~muomni.errors.DataError`.
UTF-16 and UTF-32 text (Windows Notepad's "Unicode") is refused too, by its byte-order mark or, without
one, by the NUL bytes of its first few KB: mostly ASCII, it would decode as UTF-8 with a NUL between
every two characters. A UTF-8 byte-order mark is read as text, as any character (a ``.jsonl`` skips it).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import sysconfig
import warnings
from pathlib import Path

from muomni.errors import DataError

BUILTIN_PREFIX = "builtin:"
BUILTINS = ("stdlib",)

# Parts of the standard library that are tests, demos, GUI code or vendored wheels: not the "library".
_STDLIB_SKIP = frozenset(
    {
        "site-packages",
        "dist-packages",
        "test",
        "tests",
        "idlelib",
        "__pycache__",
        "lib2to3",
        "turtledemo",
        "ensurepip",
        "tkinter",
    }
)

# Above this share of invalid bytes a file is refused rather than repaired.
MAX_INVALID_FRACTION = 0.01

# UTF-32 before UTF-16: the UTF-32-LE mark starts with the UTF-16-LE one.
_WIDE_BOMS = (
    (b"\xff\xfe\x00\x00", "UTF-32"),
    (b"\x00\x00\xfe\xff", "UTF-32"),
    (b"\xff\xfe", "UTF-16"),
    (b"\xfe\xff", "UTF-16"),
)
# The head of a file searched for NUL bytes: a slice of the bytes already read, so no second read.
_SNIFF_BYTES = 4096
# UTF-8 text holds no NUL; UTF-16 holds one for each ASCII character (English: half its bytes; Cyrillic or
# Greek: the high byte of each space and digit, about a tenth). Above this share of the head it is not text.
_MAX_NUL_FRACTION = 0.05

# Bump when the way documents are cut changes, so caches keyed on the fingerprint are rebuilt.
# 2: a folder's .jsonl files are read as JSON Lines (they were read as plain text).
_FORMAT_VERSION = 2

_BLANK_LINE = re.compile(r"\n\s*\n")
# surrogateescape maps each undecodable byte to one lone surrogate in this range, and a strict
# UTF-8 decode never yields one otherwise, so counting them counts the invalid bytes.
_ESCAPED_BYTE = re.compile("[\udc80-\udcff]")


def load_documents(source: str) -> list[str]:
    """Read a corpus as a list of documents.

    Args:
        source: ``builtin:stdlib``, a folder, a ``.jsonl`` file, or any other text file.

    Returns:
        The documents, in a stable order; none of them is empty or whitespace-only.

    Raises:
        DataError: the path does not exist, an unknown builtin name, an empty folder, a ``.json`` file
            (given or in the folder), a bad JSONL line, a file that is not UTF-8 text, or a corpus with no
            text at all.
    """
    if source.startswith(BUILTIN_PREFIX):
        _check_builtin(source)
        docs = [_read_text(p) for p in _stdlib_files()] + _pydoc_topics()
    else:
        path = _existing_path(source)
        if path.is_dir():  # each file one document; a .jsonl one document per line, as on its own
            docs = [
                doc for p in _folder_files(path) for doc in (_jsonl_documents(p) if _is_jsonl(p) else [_read_text(p)])
            ]
        elif _is_jsonl(path):
            docs = _jsonl_documents(path)
        elif _is_json(path):
            raise _json_refused(path)
        else:
            docs = _BLANK_LINE.split(_read_text(path))
    docs = [d for d in docs if d.strip()]
    if not docs:
        raise DataError(f"corpus {source} holds no text (empty or only whitespace); give a file or folder with text")
    return docs


def corpus_fingerprint(source: str) -> str:
    """A cheap identity of a corpus, to key caches: it changes when a file is edited, added or removed.

    Files are not read: the fingerprint hashes each file's path, size and modification time (for
    ``builtin:stdlib``, the Python version, the stdlib path and each file's path and size).

    Args:
        source: as for :func:`load_documents`.

    Returns:
        The first 16 hex digits of a sha256.

    Raises:
        DataError: the path does not exist, an unknown builtin name, an empty folder, or a folder holding
            a ``.json`` file.
    """
    parts: list[str] = [f"muomni-corpus-v{_FORMAT_VERSION}"]
    if source.startswith(BUILTIN_PREFIX):
        _check_builtin(source)
        root = Path(sysconfig.get_paths()["stdlib"])
        parts += [source, sys.version, str(root)]
        parts += [f"{p.relative_to(root).as_posix()}\t{p.stat().st_size}" for p in _stdlib_files()]
    else:
        path = _existing_path(source).resolve()
        files = _folder_files(path) if path.is_dir() else [path]
        parts.append("folder" if path.is_dir() else "file")
        for p in files:
            st = p.stat()
            parts.append(f"{p}\t{st.st_size}\t{st.st_mtime_ns}")
    return hashlib.sha256("\n".join(parts).encode("utf-8", "surrogateescape")).hexdigest()[:16]


def _check_builtin(source: str) -> None:
    name = source[len(BUILTIN_PREFIX) :]
    if name not in BUILTINS:
        known = ", ".join(BUILTIN_PREFIX + b for b in BUILTINS)
        raise DataError(f"unknown built-in corpus '{source}'; the built-in corpora are: {known}")


def _existing_path(source: str) -> Path:
    path = Path(source).expanduser()
    if not path.exists():
        raise DataError(
            f"train_text {source} does not exist; give a .txt/.jsonl file, a folder, or {BUILTIN_PREFIX}stdlib"
        )
    return path


def _stdlib_files() -> list[Path]:
    """The standard library's ``.py`` files, sorted, without tests, demos and vendored code."""
    root = Path(sysconfig.get_paths()["stdlib"])
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in _STDLIB_SKIP]
        found += [Path(dirpath, f) for f in filenames if f.endswith(".py")]
    return sorted(found, key=lambda p: p.relative_to(root).parts)


def _pydoc_topics() -> list[str]:
    """The help topics of ``pydoc`` (language reference excerpts), one document each."""
    try:
        from pydoc_data.topics import topics
    except ImportError:  # some distributions strip pydoc_data; the .py files are still plenty
        return []
    return [topics[key] for key in sorted(topics)]


def _folder_files(root: Path) -> list[Path]:
    """Every regular file under ``root``, sorted by path, skipping hidden files and folders."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        found += [Path(dirpath, f) for f in filenames if not f.startswith(".")]
    files = sorted((p for p in found if p.is_file()), key=lambda p: p.relative_to(root).parts)
    if not files:
        raise DataError(f"folder {root} holds no files (hidden files are skipped); put text files in it")
    # Refused as on its own, and not skipped: the folder's other files might be a small part of the corpus,
    # and a file that cannot be trained on as it is stops the run (as a binary one does) rather than vanish.
    # Here, where the cache's fingerprint lists the files too, so a corpus cached before is refused as well.
    if json_files := [p for p in files if _is_json(p)]:
        raise _json_refused(json_files[0], len(json_files) - 1, in_folder=True)
    return files


def _read_text(path: Path) -> str:
    """A file's text as UTF-8, repairing a few bad bytes (with a warning) and refusing binary files."""
    data = path.read_bytes()
    _refuse_wide_text(path, data)  # before decoding: mostly ASCII UTF-16 decodes as UTF-8 without an error
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    n_bad = len(_ESCAPED_BYTE.findall(data.decode("utf-8", "surrogateescape")))
    if n_bad > MAX_INVALID_FRACTION * len(data):
        raise DataError(
            f"{path} does not look like UTF-8 text ({n_bad} of {len(data)} bytes invalid); convert it to UTF-8, "
            "or remove it from the corpus if it is not text"
        )
    warnings.warn(f"{path}: {n_bad} bytes were not UTF-8 and were replaced with U+FFFD", stacklevel=2)
    return data.decode("utf-8", "replace")


def _refuse_wide_text(path: Path, data: bytes) -> None:
    """Refuse UTF-16 or UTF-32 text, known by its byte-order mark or, without one, by NULs in its head."""
    for bom, encoding in _WIDE_BOMS:
        if data.startswith(bom):  # iconv reads the byte order from the mark
            raise DataError(f"{path} is {encoding} text, not UTF-8: convert it (e.g. iconv -f {encoding} -t UTF-8)")
    head = data[:_SNIFF_BYTES]
    nul_even, nul_odd = head[0::2].count(0), head[1::2].count(0)
    if nul_even + nul_odd <= _MAX_NUL_FRACTION * len(head):
        return
    # UTF-16 puts its NULs at one parity only (the high byte of ASCII); binary data or UTF-32 at both.
    if min(nul_even, nul_odd) * 8 <= max(nul_even, nul_odd):
        # Without a mark iconv must be told the byte order.
        encoding, parity = ("UTF-16LE", "odd") if nul_odd > nul_even else ("UTF-16BE", "even")
        raise DataError(
            f"{path} looks like {encoding} text without a byte-order mark (NUL bytes at {parity} offsets), not UTF-8: "
            f"convert it (e.g. iconv -f {encoding} -t UTF-8)"
        )
    raise DataError(
        f"{path} is not UTF-8 text ({nul_even + nul_odd} of its first {len(head)} bytes are NUL); convert it to "
        "UTF-8, or remove it from the corpus if it is not text"
    )


def _is_jsonl(path: Path) -> bool:
    return path.suffix.lower() == ".jsonl"


def _is_json(path: Path) -> bool:
    return path.suffix.lower() == ".json"


def _json_refused(path: Path, others: int = 0, in_folder: bool = False) -> DataError:
    """A ``.json`` file read as text would train on JSON's syntax (a records file: as one document)."""
    more = f" (and {others} more .json files)" if others else ""
    out = ", or remove it from the corpus" if in_folder else ""
    return DataError(
        f'{path} is a .json file{more}; muomni reads .jsonl, one {{"text": ...}} object a line: convert it '
        f"(or give it another suffix if it is plain text{out})"
    )


def _jsonl_documents(path: Path) -> list[str]:
    """The ``text`` field of each non-empty line of a JSON Lines file (a byte-order mark before the first is
    skipped: some editors on Windows write one, and JSON does not allow it)."""
    docs = []
    for lineno, line in enumerate(_read_text(path).removeprefix("\ufeff").split("\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(
                f'{path} line {lineno} is not valid JSON ({e.msg}); each line must be an object like {{"text": "..."}}'
            ) from None
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise DataError(
                f'{path} line {lineno} has no string field "text"; each line must be an object like {{"text": "..."}}'
            )
        docs.append(record["text"])
    return docs


__all__ = ["load_documents", "corpus_fingerprint"]
