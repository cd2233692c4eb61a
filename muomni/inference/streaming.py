"""Turning generated token ids into text as they arrive: streaming callbacks and stop strings.

Byte-level BPE can split one UTF-8 character over several tokens, so a piece is only emitted once the
text decoded so far does not end in an incomplete character (U+FFFD). Text that might be the start of a
stop string is held back until it is clear that it is not.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from muomni.data import Tokenizer

StreamCallback = Callable[[int, str], None]
REPLACEMENT = "\ufffd"


class TextStream:
    """Per-row text of a generation, fed with new tokens after each decode call.

    Args:
        tokenizer: decodes the ids.
        rows: the batch size.
        callback: ``callback(row, piece)`` for each new piece of text, or None.
        stop: strings that end a row's completion (they are not part of it).
    """

    def __init__(
        self, tokenizer: Tokenizer, rows: int, callback: StreamCallback | None = None, stop: Sequence[str] = ()
    ) -> None:
        self.tokenizer = tokenizer
        self.callback = callback
        self.stop = tuple(s for s in stop if s)
        self.ids: list[list[int]] = [[] for _ in range(rows)]
        self.text = [""] * rows  # the decoded completion, cut at a stop string once one is seen
        self.sent = [0] * rows  # characters already given to the callback
        self.finished = [False] * rows

    def __call__(self, new_tokens: list[list[int]]) -> dict[int, int]:
        """Take each row's new tokens; return ``{row: tokens to keep}`` for rows a stop string ended."""
        ended: dict[int, int] = {}
        for row, ids in enumerate(new_tokens):
            if self.finished[row]:
                continue
            if self.tokenizer.eos_id in ids:
                ids = ids[: ids.index(self.tokenizer.eos_id)]
                self.finished[row] = True
            start = len(self.ids[row])
            self.ids[row].extend(ids)
            self.text[row] = self.tokenizer.decode(self.ids[row])
            if self._find_stop(row) >= 0:
                ended[row] = self._cut_at_stop(row, start)
                self.finished[row] = True
            self._emit(row)
        return ended

    def close(self) -> list[str]:
        """Flush what was held back and return every row's completion."""
        for row in range(len(self.text)):
            self.finished[row] = True
            self._emit(row)
        return list(self.text)

    def _find_stop(self, row: int) -> int:
        # A stop string that is new must end after the text already sent, so only the tail is searched.
        tail_from = max(self.sent[row] - max((len(s) for s in self.stop), default=0), 0)
        hits = [i for s in self.stop if (i := self.text[row].find(s, tail_from)) >= 0]
        return min(hits, default=-1)

    def _cut_at_stop(self, row: int, start: int) -> int:
        """Cut the row's text before its stop string; return how many tokens it took to complete it."""
        ids = self.ids[row]
        for n in range(start + 1, len(ids) + 1):
            self.text[row] = self.tokenizer.decode(ids[:n])
            cut = self._find_stop(row)
            if cut >= 0:
                self.text[row] = self.text[row][:cut]
                del ids[n:]
                return n
        raise AssertionError("a stop string was found in the text but in no prefix of its tokens")

    def _emit(self, row: int) -> None:
        text = self.text[row]
        end = len(text)
        if not self.finished[row]:
            if text.endswith(REPLACEMENT):
                return
            end -= _held_back(text, self.stop)
        if end > self.sent[row]:
            if self.callback is not None:
                self.callback(row, text[self.sent[row] : end])
            self.sent[row] = end


def _held_back(text: str, stops: tuple[str, ...]) -> int:
    """Length of the longest end of ``text`` that begins some stop string (it may yet become one)."""
    longest = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:n]):
                longest = n
                break
    return longest
