"""``muomni generate`` and ``muomni chat``: argument handling around :mod:`muomni.inference`."""

from __future__ import annotations

import argparse
import sys
import warnings
from typing import Any

from muomni.data import Tokenizer
from muomni.errors import InputError
from muomni.inference.generate import check_options, generate
from muomni.inference.line_input import line_reader
from muomni.inference.loading import load
from muomni.inference.stats import GenerationStats
from muomni.models.thinker import Thinker

# The command line's name of each option of generate() and chat() that is checked, for the errors to name
# what the user typed.
FLAGS = {
    "max_new_tokens": "--max-new-tokens",
    "temperature": "--temperature",
    "top_k": "--top-k",
    "top_p": "--top-p",
    "seed": "--seed",
    "decode_chunk": "--decode-chunk",
}


def load_from_args(args: argparse.Namespace) -> tuple[Thinker, Tokenizer]:
    """The model and tokenizer of ``--ckpt`` on ``--device`` in ``--dtype``, cache per ``--no-kv-cache``.

    The sampling options are checked first: a bad one is reported by its flag, before a model is loaded.
    """
    try:
        check_options(args.max_new_tokens, args.seed, sampling_kwargs(args))
    except InputError as e:
        raise InputError(_named_as_flag(str(e))) from None
    _warn_idle_options(args)
    model, tokenizer = load(args.ckpt, device=args.device, dtype=getattr(args, "dtype", None))
    model.enable_kv_cache(not args.no_kv_cache)
    return model, tokenizer


def _warn_idle_options(args: argparse.Namespace) -> None:
    """Say so when an option given would change nothing: ``--decode-chunk`` sets how many steps one CUDA graph
    or compiled call holds, and eager decoding runs the same steps, launch by launch, whatever it is."""
    chunk = getattr(args, "decode_chunk", None)
    if chunk in (None, 1):
        return
    if not (args.compile or args.tune):
        warnings.warn(f"--decode-chunk {chunk} speeds up compiled decoding only; add --compile", stacklevel=2)
    elif args.no_kv_cache:
        warnings.warn(f"--decode-chunk {chunk} applies to cached decoding; without the KV cache it is 1", stacklevel=2)


def sampling_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The options shared by ``generate`` and ``chat``, as keyword arguments of :func:`generate`."""
    return {
        "temperature": args.temperature,
        "top_k": args.top_k,
        "top_p": args.top_p,
        "seed": args.seed,
        "compile": args.compile,
        "tune": args.tune,
        "decode_chunk": getattr(args, "decode_chunk", None),
    }


def _named_as_flag(message: str) -> str:
    """``message`` with the option it starts with ("top_p must be ...") named as its flag ("--top-p must be ...")."""
    name = message.split(" ", 1)[0]
    return FLAGS[name] + message[len(name) :] if name in FLAGS else message


def run_generate(args: argparse.Namespace) -> int:
    """Complete every ``--prompt`` in one batch and print each prompt followed by its completion."""
    model, tokenizer = load_from_args(args)
    stats = GenerationStats() if args.stats else None
    completions = generate(
        model,
        tokenizer,
        args.prompt,
        args.max_new_tokens,
        truncate=args.truncate,
        stats=stats,
        **sampling_kwargs(args),
    )
    for i, (prompt, completion) in enumerate(zip(args.prompt, completions)):
        if len(args.prompt) > 1:
            print(f"{'-' * 20} [{i + 1}/{len(args.prompt)}] {'-' * 20}")
        print(prompt + completion, flush=True)
    if stats is not None:
        print(stats.format())
    return 0


def run_chat(args: argparse.Namespace) -> int:
    """The interactive chat (see :mod:`muomni.inference.chat`)."""
    from muomni.inference.chat import chat

    model, tokenizer = load_from_args(args)
    _read_bad_bytes_as_text(sys.stdin)  # for input(), where the line reader below cannot be used
    read = line_reader(sys.stdin)  # a Ctrl-C at the prompt ends the chat at once, whichever thread takes it
    return chat(model, tokenizer, args.max_new_tokens, show_stats=args.stats, read=read, **sampling_kwargs(args))


def _read_bad_bytes_as_text(stdin: object) -> None:
    """Make standard input pass on bytes that are not UTF-8 (as lone surrogates, which the chat rejects line by
    line) rather than fail on them: a strict decoder, the default in most UTF-8 locales, raises in the middle
    of ``input()`` and drops the lines it had already read ahead."""
    reconfigure = getattr(stdin, "reconfigure", None)  # io.TextIOWrapper; a test's stand-in may lack it
    if reconfigure is not None:
        reconfigure(errors="surrogateescape")
