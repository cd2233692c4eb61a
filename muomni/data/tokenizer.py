"""A byte-level BPE tokenizer: a thin wrapper over a Hugging Face ``tokenizers.Tokenizer``.

Byte-level means every string round-trips exactly (``decode(encode(s)) == s``): text is split into
UTF-8 bytes, so there is no unknown token and no normalisation. Tokenizers trained here have the
special tokens ``<pad>``, ``<bos>``, ``<eos>`` with ids 0, 1, 2; a ``tokenizer.json`` from another
model can be wrapped by giving its special ids. Special tokens are never matched in text: a document
that contains the string ``<eos>`` is encoded as those characters, not as the ``<eos>`` id.

Training is deterministic: the Rust BPE trainer breaks ties between equally frequent pairs by the
pair itself, so the same documents give the same ``tokenizer.json`` whatever the thread count
(checked by the tests, in-process and across processes).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from muomni.errors import DataError
from muomni.interruptible import call_interruptibly

SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>")
FILE_NAME = "tokenizer.json"
# 256 byte tokens + the 3 special tokens: the smallest byte-level vocabulary.
MIN_VOCAB_SIZE = 256 + len(SPECIAL_TOKENS)


class Tokenizer:
    """Text <-> token ids, with known ``pad_id``, ``bos_id`` and ``eos_id``.

    Args:
        hf: the Hugging Face tokenizer to wrap.
        pad_id, bos_id, eos_id: the special ids; each one left None is looked up by name
            (``<pad>``, ``<bos>``, ``<eos>``).

    Raises:
        DataError: a special token is missing or an id is outside the vocabulary.
    """

    def __init__(
        self, hf: HFTokenizer, pad_id: int | None = None, bos_id: int | None = None, eos_id: int | None = None
    ) -> None:
        self.hf = hf
        # Text that spells a special token ("<eos>" in a doc about tokenizers) stays text: special ids
        # come only from the code, and decode(encode(s)) == s holds for every s. (Runtime flag, not saved.)
        if hasattr(hf, "encode_special_tokens"):
            hf.encode_special_tokens = True
        given = (pad_id, bos_id, eos_id)
        self._pad_id, self._bos_id, self._eos_id = (
            self._special_id(name, tid) for name, tid in zip(SPECIAL_TOKENS, given, strict=True)
        )

    def _special_id(self, name: str, token_id: int | None) -> int:
        if token_id is None:
            found = self.hf.token_to_id(name)
            if found is None:
                raise DataError(f"tokenizer has no {name} token; pass its id (pad_id, bos_id, eos_id) explicitly")
            return found
        if not 0 <= token_id < self.vocab_size:
            raise DataError(
                f"special token id {token_id} for {name} is outside the vocabulary (0..{self.vocab_size - 1})"
            )
        return token_id

    @property
    def pad_id(self) -> int:
        return self._pad_id

    @property
    def bos_id(self) -> int:
        return self._bos_id

    @property
    def eos_id(self) -> int:
        return self._eos_id

    @property
    def vocab_size(self) -> int:
        """The real number of tokens, special tokens included (may be below the requested size)."""
        return self.hf.get_vocab_size()

    @classmethod
    def train(cls, documents: Sequence[str], vocab_size: int) -> Tokenizer:
        """Train a byte-level BPE tokenizer with ``<pad>``, ``<bos>``, ``<eos>`` = 0, 1, 2.

        Args:
            documents: the training text.
            vocab_size: the largest vocabulary to reach; a small corpus may stop short of it.

        Raises:
            DataError: ``vocab_size`` is below 259 (256 bytes + 3 special tokens).
        """
        if vocab_size < MIN_VOCAB_SIZE:
            raise DataError(
                f"vocab_size {vocab_size} is too small for a byte-level tokenizer; use at least {MIN_VOCAB_SIZE}"
            )
        hf = HFTokenizer(models.BPE())
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        hf.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=list(SPECIAL_TOKENS),
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        call_interruptibly(hf.train_from_iterator, documents, trainer=trainer)  # it drops a Ctrl-C itself
        return cls(hf)

    @classmethod
    def from_hf(cls, hf: HFTokenizer, pad_id: int | None, bos_id: int | None, eos_id: int | None) -> Tokenizer:
        """Wrap another model's tokenizer, giving its special ids (None: look ``<pad>`` etc. up by name)."""
        return cls(hf, pad_id=pad_id, bos_id=bos_id, eos_id=eos_id)

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``, without special tokens."""
        return self.hf.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of many texts at once (in parallel), without special tokens."""
        texts = list(texts)
        fast = getattr(self.hf, "encode_batch_fast", None)  # skips offsets; missing in old tokenizers
        encodings = (fast or self.hf.encode_batch)(texts, add_special_tokens=False)
        return [e.ids for e in encodings]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        """The text of ``ids``; special tokens are dropped unless ``skip_special_tokens`` is False."""
        return self.hf.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        return self.hf.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        return self.hf.id_to_token(token_id)

    def to_str(self) -> str:
        """The ``tokenizer.json`` content."""
        return self.hf.to_str()

    def save(self, path: str | Path) -> Path:
        """Write ``tokenizer.json``.

        Args:
            path: a ``.json`` file to write, or a folder (created if needed) to write ``tokenizer.json`` in.

        Returns:
            The file written.
        """
        path = Path(path)
        if path.suffix.lower() != ".json":
            path.mkdir(parents=True, exist_ok=True)
            path = path / FILE_NAME
        path.write_text(self.to_str(), encoding="utf-8")
        return path

    @classmethod
    def load(
        cls, path: str | Path, pad_id: int | None = None, bos_id: int | None = None, eos_id: int | None = None
    ) -> Tokenizer:
        """Read a ``tokenizer.json``.

        Args:
            path: the file, or a folder that holds ``tokenizer.json``.
            pad_id, bos_id, eos_id: as for the constructor (None: found by name).

        Raises:
            DataError: the file is missing, not a tokenizer, or lacks a special token.
        """
        path = Path(path)
        if path.is_dir():
            path = path / FILE_NAME
        missing = f"tokenizer file {path} does not exist; train a tokenizer first or give the right path"
        if not path.is_file():
            raise DataError(missing)
        try:
            hf = read_tokenizer_json(path)
        except FileNotFoundError:  # removed since the check above (a run pruning its checkpoints, say)
            raise DataError(missing) from None
        except OSError as e:
            raise DataError(f"tokenizer file {path} cannot be read ({e.strerror}); check its permissions") from e
        except ValueError as e:
            raise DataError(
                f"tokenizer file {path} is corrupt or not a tokenizer.json ({e}); delete or replace it"
            ) from e
        return cls(hf, pad_id=pad_id, bos_id=bos_id, eos_id=eos_id)

    def __repr__(self) -> str:
        return (
            f"Tokenizer(vocab_size={self.vocab_size}, pad_id={self.pad_id}, bos_id={self.bos_id}, eos_id={self.eos_id})"
        )


def read_tokenizer_json(path: Path) -> HFTokenizer:
    """The Hugging Face tokenizer saved in ``path``.

    Raises:
        OSError: the file cannot be read at all (gone, say).
        ValueError: the file reads but is no ``tokenizer.json``; the message is the first line of why.
    """
    text = path.read_text(encoding="utf-8")  # not UTF-8: UnicodeDecodeError, a ValueError
    try:
        return HFTokenizer.from_str(text)
    except Exception as e:  # tokenizers raises a bare Exception for a malformed file
        raise ValueError(str(e).splitlines()[0] if str(e) else type(e).__name__) from e


def check_vocab(tokenizer: Tokenizer, vocab_size: int) -> None:
    """Check that a model with ``vocab_size`` embeddings can take every id of ``tokenizer``.

    A tokenizer with fewer tokens is fine (a small corpus may not reach ``vocab_size`` merges).

    Raises:
        DataError: the tokenizer has more tokens than ``vocab_size``.
    """
    if tokenizer.vocab_size > vocab_size:
        raise DataError(
            f"tokenizer has {tokenizer.vocab_size} tokens but vocab_size is {vocab_size}; "
            f"set vocab_size to at least {tokenizer.vocab_size} or retrain the tokenizer"
        )


__all__ = ["Tokenizer", "check_vocab", "read_tokenizer_json", "SPECIAL_TOKENS"]
