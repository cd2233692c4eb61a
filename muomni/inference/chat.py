"""``muomni chat``: an interactive, streaming conversation with a plain language model.

The Thinker is a plain LM, not an instruction-tuned one, so the conversation is plain text that the model
continues::

    User: <message>
    Assistant: <reply>
    User: <message>
    Assistant:

A reply ends at ``<eos>``, at ``max_new_tokens`` (at most half the context), or when the model starts the
next ``User:`` line itself. Each turn's prompt is the whole conversation, but only what the KV cache does
not hold yet runs through the model (:class:`~muomni.inference.prefix.KVPrefix`), most often the new line and
message: the history keeps each reply as the ids the model sampled, which the cache holds, all but the last
one. When the conversation no longer fits in ``ctx_len`` the oldest turns are dropped, with one line saying
so, and what is left runs again.

Commands: ``exit`` or ``quit`` (or end of input, Ctrl-D) ends the chat, ``/reset`` clears the history (any
case); Ctrl-C during a reply stops that reply and drops its turn, and at the prompt ends the chat (the
command reads its lines with :class:`~muomni.inference.line_input.LineReader`, which a Ctrl-C interrupts at
once). A one-word line that starts with ``/`` but is no command (a mistyped ``/rest``) is not sent, with one
line naming the commands; such a one-word message is typed with one more ``/`` (``//etc`` sends ``/etc``;
longer lines go as they are). A bad option ends the chat before it starts; a message that is not valid UTF-8
text is not sent, with one line saying so, and the chat goes on.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TextIO

from muomni.data import Tokenizer
from muomni.inference.generate import check_options, generate_tokens, is_unicode
from muomni.inference.prefix import KVPrefix
from muomni.inference.stats import GenerationStats
from muomni.inference.streaming import TextStream
from muomni.models.thinker import Thinker

USER, ASSISTANT = "User:", "Assistant:"
STOP = ("\n" + USER,)
PROMPT_MARKER = "> "
QUIT = ("exit", "quit")
RESET = "/reset"
ESCAPE = "//"  # a one-word message that starts with "/" is typed with one more: "//etc" sends "/etc"
# torch takes seeds modulo 2**64, so per-turn seeds wrap there rather than leave its range.
SEED_WRAP = 2**64


@dataclass
class Conversation:
    """The turns so far, as text and as token ids, kept within ``ctx_len - reply_tokens``."""

    tokenizer: Tokenizer
    ctx_len: int
    reply_tokens: int
    turns: list[list[int]] = field(default_factory=list)  # ids of "User: ...\nAssistant: ...\n" per turn
    prefix: KVPrefix = field(default_factory=KVPrefix)  # what the model's KV cache holds of the conversation

    def prompt_ids(self, message: str) -> tuple[list[int], int, bool]:
        """Ids of the history plus ``message``; also how many old turns were dropped, and whether the
        message itself had to be cut (its end is kept) to leave room for the reply."""
        limit = self.ctx_len - self.reply_tokens
        new = self.tokenizer.encode(f"{USER} {message}\n{ASSISTANT}")
        dropped = 0
        while self.turns and sum(len(t) for t in self.turns) + len(new) > limit:
            self.turns.pop(0)
            dropped += 1
        history = [i for turn in self.turns for i in turn]
        return history + new[-limit:], dropped, len(new) > limit

    def add(self, message: str, reply: list[int]) -> None:
        """Keep a turn: the message framed as :meth:`prompt_ids` framed it, then the reply's ids, then a new
        line. Ids, not text: the ids the model sampled are what the KV cache holds, and the same text
        tokenized again can part from them (see :func:`reply_ids`)."""
        self.turns.append(self.tokenizer.encode(f"{USER} {message}\n{ASSISTANT}") + reply + self.tokenizer.encode("\n"))

    def reset(self) -> None:
        self.turns.clear()
        self.prefix.forget()


def chat(
    model: Thinker,
    tokenizer: Tokenizer,
    max_new_tokens: int = 128,
    *,
    show_stats: bool = False,
    seed: int | None = None,
    read: Callable[[str], str] = input,
    out: TextIO | None = None,
    **sampling: object,
) -> int:
    """Run the chat loop until ``exit``, ``quit`` or end of input; return the exit code (0).

    Args:
        model, tokenizer: from :func:`muomni.load`.
        max_new_tokens: the longest reply (at most half of ``ctx_len``).
        show_stats: print token counts and speeds after each reply.
        seed: seeds each reply (turn ``i`` uses ``seed + i``), so a session can be replayed.
        read: reads one line after printing its prompt; raises EOFError at the end of input.
        out: where replies go (standard output by default).
        sampling: ``temperature``, ``top_k``, ``top_p``, ``compile``, ``tune``, ``decode_chunk`` for generation.
    """
    check_options(max_new_tokens, seed, sampling)  # before the chat starts, not at the first message
    out = out or sys.stdout
    ctx_len = model.config.ctx_len
    reply_tokens = max(min(max_new_tokens, ctx_len // 2), 1)
    if reply_tokens < max_new_tokens:
        # A warning (stderr), not the conversation's text: piped out, a chat's stdout is its replies.
        warnings.warn(f"replies are limited to {reply_tokens} tokens, half of ctx_len {ctx_len}", stacklevel=2)
    conversation = Conversation(tokenizer, ctx_len, reply_tokens)
    print(f"muomni chat: type a message; '{RESET}' clears the history, 'exit' or Ctrl-D quits", file=out, flush=True)
    turn = 0
    while True:
        try:
            message = read(PROMPT_MARKER).strip()
        except EOFError:
            print(file=out)
            return 0
        if message.lower() in QUIT:
            return 0
        if message.lower() == RESET:
            conversation.reset()
            print("(history cleared)", file=out)
            continue
        if not is_unicode(message):  # a bad line costs that line, as a too long one costs its start
            print("(your message is not valid UTF-8 text, so it was not sent; type it again)", file=out, flush=True)
            continue
        if _unknown_command(message):
            print(
                f"(unknown command {message}, not sent; {RESET} clears the history, exit quits; "
                f"to send it as a message, begin it with {ESCAPE})",
                file=out,
                flush=True,
            )
            continue
        if message.startswith(ESCAPE) and len(message.split()) == 1:  # "// a C comment" goes as it is
            message = message[1:]
        if message:
            turn_seed = None if seed is None else (seed + turn) % SEED_WRAP
            try:
                _answer(model, conversation, message, turn_seed, show_stats, out, sampling)
            except KeyboardInterrupt:  # Ctrl-C stops this reply, not the chat; the turn is not kept
                print("\n(reply interrupted)", file=out, flush=True)
            turn += 1


def _unknown_command(message: str) -> bool:
    """A line that looks like a command (one word that starts with "/") but is none: a typo, most likely."""
    return message.startswith("/") and not message.startswith(ESCAPE) and len(message.split()) == 1


def _answer(
    model: Thinker,
    conversation: Conversation,
    message: str,
    seed: int | None,
    show_stats: bool,
    out: TextIO,
    sampling: dict[str, object],
) -> None:
    """Stream one reply to ``out`` and add the turn to the conversation."""
    ids, dropped, cut = conversation.prompt_ids(message)
    if dropped:
        print(f"(dropped the {dropped} oldest turn(s) to fit the {conversation.ctx_len}-token context)", file=out)
    if cut:
        print("(your message is longer than the context allows; only its end is used)", file=out)
    tokenizer = conversation.tokenizer
    printer = _ReplyPrinter(out)
    stream = TextStream(tokenizer, 1, printer, stop=STOP)
    stats = GenerationStats() if show_stats else None
    sampled = generate_tokens(
        model,
        [ids],
        conversation.reply_tokens,
        seed=seed,
        eos_id=tokenizer.eos_id,
        pad_id=tokenizer.pad_id,
        stats=stats,
        observer=stream,
        prefix=conversation.prefix,
        **sampling,  # type: ignore[arg-type]
    )
    reply = stream.close()[0]  # cut before the stop string
    print(file=out, flush=True)
    conversation.add(message, reply_ids(tokenizer, sampled[0], reply))
    if stats is not None:
        print(stats.format(), file=out, flush=True)


def reply_ids(tokenizer: Tokenizer, sampled: list[int], reply: str) -> list[int]:
    """The ids of ``reply``, the text of ``sampled`` cut before a stop string or ``<eos>``: the sampled ids
    as far as their text is the reply's beginning, then the rest of the reply tokenized (the part of a
    token that a stop string began inside)."""
    kept = [i for i in sampled if i != tokenizer.eos_id]
    text = tokenizer.decode(kept)
    while kept and not reply.startswith(text):
        kept.pop()
        text = tokenizer.decode(kept)
    rest = reply[len(text) :]
    return kept + (tokenizer.encode(rest) if rest else [])


class _ReplyPrinter:
    """Writes streamed pieces as they come, without the reply's leading whitespace."""

    def __init__(self, out: TextIO) -> None:
        self.out, self.started = out, False

    def __call__(self, row: int, piece: str) -> None:
        if not self.started:
            piece = piece.lstrip()
            self.started = bool(piece)
        self.out.write(piece)
        self.out.flush()
