"""The data layer: corpus -> documents -> tokenizer -> cached tokens -> training windows."""

from muomni.data.corpus import corpus_fingerprint, load_documents
from muomni.data.dataset import TokenData, WindowStream
from muomni.data.token_cache import cache_dir, prepare_tokenizer
from muomni.data.tokenizer import Tokenizer, check_vocab

__all__ = [
    "load_documents",
    "corpus_fingerprint",
    "Tokenizer",
    "check_vocab",
    "TokenData",
    "WindowStream",
    "prepare_tokenizer",
    "cache_dir",
]
