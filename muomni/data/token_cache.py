"""The cache of corpus-derived files: tokenizers, and token files split by document.

The corpus is tokenized once into ``<cache>/tokens/<key>.bin`` (raw ``uint16``, or ``uint32`` for
vocabularies of 65536 and more) with a JSON sidecar ``<key>.json`` holding each document's offset and
the file's checksum. Later runs memory-map the file: no re-reading, no re-tokenization; a file that no
longer matches its sidecar is rebuilt, with a warning (see :mod:`~muomni.data.cache_check`). The key
hashes the corpus fingerprint (paths, sizes, mtimes: see :func:`~muomni.data.corpus.corpus_fingerprint`)
and the tokenizer, so editing the corpus or retraining the tokenizer makes a new file. Every cache file is
written to a temporary name and renamed, so a crash never leaves a half-written file under the real
name, and processes that build the same file at once (one per GPU) all end with the same content.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from muomni.data.cache_check import check_offsets, content_problem, file_digest, size_problem
from muomni.data.corpus import corpus_fingerprint, load_documents
from muomni.data.tokenizer import SPECIAL_TOKENS, Tokenizer, read_tokenizer_json
from muomni.errors import DataError
from muomni.paths import file_in_the_way

# Bump when the token file layout changes, so old cache files are not misread.
_TOKENS_FORMAT = 1
# Documents tokenized per encode_batch call: large enough to use every core, small enough that the
# Python lists of ids for one batch stay a few hundred MB at most.
_ENCODE_BATCH = 512


def cache_dir() -> Path:
    """Where muomni caches tokenizers and token files: ``$MUOMNI_CACHE``, else ``~/.cache/muomni``.

    Raises:
        DataError: it, or a folder on its path, is a file.
    """
    env = os.environ.get("MUOMNI_CACHE")
    path = Path(env).expanduser() if env else Path.home() / ".cache" / "muomni"
    if (blocking := file_in_the_way(path)) is not None:
        where = "MUOMNI_CACHE" if env else "the cache folder"
        raise DataError(f"{where} {path} cannot be a folder: {blocking} is a file; point MUOMNI_CACHE at a folder")
    return path


@contextlib.contextmanager
def _atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it is renamed to ``path``, else removed.

    Raises:
        DataError: the cache folder cannot be made or written (read-only, ``/proc``, full).
    """
    # A name unique to this process and call: ranks that build the same file at once do not collide.
    # (Not tempfile.mkstemp: its files are private (0600), cache files should follow the umask.)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}-{secrets.token_hex(4)}.tmp{path.suffix}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        os.replace(tmp, path)
    except OSError as e:  # what is written here is only ever the cache (the corpus is read before)
        where = "MUOMNI_CACHE" if os.environ.get("MUOMNI_CACHE") else "the cache folder"
        raise DataError(
            f"cannot write {where} {path.parent.parent} ({e.strerror or e}); point MUOMNI_CACHE at a writable folder"
        )
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


def prepare_tokenizer(source: str, vocab_size: int, documents: Sequence[str] | None = None) -> Tokenizer:
    """The tokenizer of a corpus: trained on first use, then read from the cache.

    The cache file is ``cache_dir()/tokenizers/<corpus fingerprint>-<vocab_size>.json``.

    Args:
        source: the corpus, as for :func:`~muomni.data.corpus.load_documents`.
        vocab_size: the largest vocabulary to train.
        documents: the corpus's documents if already loaded (read from ``source`` otherwise).

    Raises:
        DataError: a bad corpus or a ``vocab_size`` too small for a byte-level tokenizer.
    """
    path = cache_dir() / "tokenizers" / f"{corpus_fingerprint(source)}-{vocab_size}.json"
    if (cached := _cached_tokenizer(path)) is not None:
        return cached
    docs = documents if documents is not None else load_documents(source)
    tokenizer = Tokenizer.train(docs, vocab_size)
    with _atomic_path(path) as tmp:
        tokenizer.save(tmp)
    return tokenizer


def _cached_tokenizer(path: Path) -> Tokenizer | None:
    """The tokenizer cached at ``path``; None when there is none, or when it is corrupt (with a warning that a
    new one replaces it: the caller trains one and writes it over the file)."""
    if not path.is_file():
        return None
    try:
        hf = read_tokenizer_json(path)
        # Every tokenizer cached here was trained here: anything else in its place is damage, not a choice.
        if [hf.token_to_id(name) for name in SPECIAL_TOKENS] != list(range(len(SPECIAL_TOKENS))):
            raise ValueError(f"its special tokens are not {', '.join(SPECIAL_TOKENS)} = 0, 1, 2")
    except FileNotFoundError:  # removed since the check above: as if it had never been there
        return None
    except ValueError as e:
        warnings.warn(f"the cached tokenizer {path} is corrupt ({e}): training a new one in its place", stacklevel=3)
        return None
    return Tokenizer(hf)


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size < 2**16 else np.dtype(np.uint32)


def _tokenize_to_file(documents: Sequence[str], tokenizer: Tokenizer, path: Path) -> list[int]:
    """Write every document's ids followed by ``<eos>`` to ``path``; return the document offsets."""
    dtype = token_dtype(tokenizer.vocab_size)
    offsets = [0]
    with open(path, "wb") as f:
        for start in range(0, len(documents), _ENCODE_BATCH):
            batch = tokenizer.encode_batch(documents[start : start + _ENCODE_BATCH])
            flat = np.empty(sum(len(ids) + 1 for ids in batch), dtype=dtype)
            pos = 0
            for ids in batch:
                flat[pos : pos + len(ids)] = ids
                flat[pos + len(ids)] = tokenizer.eos_id
                pos += len(ids) + 1
                offsets.append(offsets[-1] + len(ids) + 1)
            f.write(flat.tobytes())
    return offsets


def read_token_cache(bin_path: Path, meta_path: Path, tokenizer: Tokenizer) -> tuple[np.ndarray, np.ndarray] | None:
    """The cached tokens (memory-mapped) and offsets, or None when absent or unusable (rebuilt with a warning)."""
    if not (bin_path.is_file() and meta_path.is_file()):
        return None
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        dtype = np.dtype(meta["dtype"])
        if dtype != token_dtype(tokenizer.vocab_size):  # ids read in another width are other ids
            raise ValueError(f"its tokens are {dtype}, not the vocabulary's {token_dtype(tokenizer.vocab_size)}")
        offsets = np.asarray(meta["offsets"], dtype=np.int64)
        check_offsets(offsets)
        if meta["format"] != _TOKENS_FORMAT:
            return None
    except (ValueError, KeyError, TypeError, IndexError, OverflowError, RecursionError) as e:
        warnings.warn(f"token cache {meta_path} is unreadable ({e}); rebuilding it", stacklevel=3)
        return None
    tokens = None
    if (why := size_problem(bin_path, int(offsets[-1]) * dtype.itemsize)) is None:
        tokens = np.memmap(bin_path, dtype=dtype, mode="r", shape=(int(offsets[-1]),))
        why = content_problem(bin_path, tokens, offsets, tokenizer.vocab_size, tokenizer.eos_id, meta.get("blake2b"))
    if why is not None:
        warnings.warn(f"token cache {bin_path} is corrupt ({why}); rebuilding it", stacklevel=3)
        return None
    return tokens, offsets


def token_cache_paths(source: str, tokenizer: Tokenizer) -> tuple[Path, Path]:
    """The token file of ``source`` tokenized by ``tokenizer``, and its JSON sidecar."""
    parts = [f"muomni-tokens-v{_TOKENS_FORMAT}", corpus_fingerprint(source), tokenizer.to_str(), str(tokenizer.eos_id)]
    key = hashlib.sha256("\n".join(parts).encode("utf-8")).hexdigest()[:24]
    bin_path = cache_dir() / "tokens" / f"{key}.bin"
    return bin_path, bin_path.with_suffix(".json")


def write_token_cache(
    source: str, tokenizer: Tokenizer, documents: Sequence[str] | None, bin_path: Path, meta_path: Path
) -> tuple[np.ndarray, np.ndarray]:
    """Tokenize the corpus into ``bin_path`` + ``meta_path``; return the memory-mapped tokens and offsets."""
    docs = documents if documents is not None else load_documents(source)
    with _atomic_path(bin_path) as tmp:
        offsets = _tokenize_to_file(docs, tokenizer, tmp)
    dtype = token_dtype(tokenizer.vocab_size)
    meta = {"format": _TOKENS_FORMAT, "source": source, "dtype": dtype.name, "n_tokens": offsets[-1]}
    meta["blake2b"] = file_digest(bin_path)
    meta["offsets"] = offsets  # last: the other keys stay readable at the top of the file
    with _atomic_path(meta_path) as tmp:
        tmp.write_text(json.dumps(meta), encoding="utf-8")
    tokens = np.memmap(bin_path, dtype=dtype, mode="r", shape=(offsets[-1],))
    return tokens, np.asarray(offsets, dtype=np.int64)
