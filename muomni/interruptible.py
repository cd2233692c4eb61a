"""Long calls into native code that must not hold up Ctrl-C or SIGTERM.

Python runs a signal's handler in the main thread, when that thread next runs Python code or when native
code asks for it (``PyErr_CheckSignals``). Hugging Face tokenizers' BPE training does ask, and drops the
KeyboardInterrupt it gets: a Ctrl-C during the merges of a large corpus was lost altogether, and the run
went on to train (a 130 MB corpus: 20 s of merges; a Ctrl-C 8 s into setup, nothing). :func:`call_interruptibly`
runs such a call in a worker thread, where native code's checks run no handler, and waits for it in the
main thread, whose wait the signal interrupts at once.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

_T = TypeVar("_T")
# The longest a signal waits for its handler (a wait a signal interrupts, on POSIX, ends sooner).
_POLL_S = 0.1


def call_interruptibly(fn: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
    """``fn(*args, **kwargs)``, run in a worker thread while the main thread waits for it.

    A signal's handler raises in the main thread at once (KeyboardInterrupt, SIGTERM's), leaving the call to
    end with the process: the thread is a daemon, so the exit does not wait for it. ``fn``'s own exception is
    raised here. Called from any other thread, ``fn`` runs in that thread (its signals go to the main thread
    anyway)."""
    if threading.current_thread() is not threading.main_thread():
        return fn(*args, **kwargs)
    outcome: dict[str, Any] = {}

    def work() -> None:
        try:
            outcome["value"] = fn(*args, **kwargs)
        except BaseException as e:  # handed to the waiting thread, which raises it
            outcome["error"] = e

    worker = threading.Thread(target=work, name=f"muomni-{getattr(fn, '__name__', 'call')}", daemon=True)
    worker.start()
    while worker.is_alive():  # short waits: between them the handler runs, whatever a wait does with signals
        worker.join(_POLL_S)
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


__all__ = ["call_interruptibly"]
