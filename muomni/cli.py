"""The ``muomni`` command: one subcommand per job.

Exit codes: 0 success, 2 a user error (one line on stderr, no traceback), 130 interrupted by Ctrl-C, 143 ended
by SIGTERM (training first finishes its step and writes a checkpoint, then exits with the same codes).
Each subcommand's work lives in its own package; this module only parses arguments and dispatches.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import signal
import sys
import threading
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import NoReturn

from muomni import __version__
from muomni.console import closed_stdout_dropped
from muomni.errors import ConfigError, UserError

EXIT_USER_ERROR = 2


def signal_exit_code(sig: int) -> int:
    """The shell's exit code for a process ended by ``sig``: 128 + its number (130 Ctrl-C, 143 SIGTERM)."""
    return 128 + sig


EXIT_INTERRUPTED = signal_exit_code(signal.SIGINT)
EXIT_TERMINATED = signal_exit_code(signal.SIGTERM)
# A full disk or quota while writing a checkpoint, an export or the output: the user's to fix, not a crash.
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage error on one line like every other user error (argparse prints the usage and
    ``PROG: error: ...``), pointing to the command's --help, and each option that takes one value taken at
    most once (:class:`_Once`). Subcommands' parsers are of this class too."""

    def add_argument(self, *names, **kwargs):  # noqa: ANN002, ANN003, ANN201
        if names[0].startswith("-") and "action" not in kwargs and "nargs" not in kwargs:
            kwargs["action"] = _Once
        return super().add_argument(*names, **kwargs)

    def error(self, message: str) -> NoReturn:
        command = self.prog.removeprefix("muomni").strip()  # "generate" in "muomni generate"
        where = f"{command}: " if command else ""
        self.exit(EXIT_USER_ERROR, f"muomni: error: {where}{message} (see {self.prog} --help)\n")


class _Once(argparse.Action):
    """An option given at most once: argparse keeps the last of two (``--out a --out b`` wrote b alone), and
    one of them was not meant."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:  # noqa: ANN001
        if getattr(namespace, f"_{self.dest}_given", False):
            parser.error(f"{option_string} is given twice; keep the one you mean")
        setattr(namespace, f"_{self.dest}_given", True)
        setattr(namespace, self.dest, values)


def _overrides_arg(p: argparse.ArgumentParser) -> None:
    # default=[]: without one, argparse counts a "*" positional as required in its usage errors
    # ("the following arguments are required: ..., key=value"), though none need be given.
    p.add_argument(
        "overrides", nargs="*", default=[], metavar="key=value", help="config keys to change, e.g. batch_size=8"
    )


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=None, help="a JSON file or a preset: debug, default, tiny, small")
    _overrides_arg(p)


def _sampling_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ckpt", required=True, help="a run folder (its newest checkpoint) or a checkpoint folder")
    p.add_argument("--max-new-tokens", type=int, default=128, help="new tokens at most (default: %(default)s)")
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy (default: %(default)s)")
    p.add_argument("--top-k", type=int, default=0, help="0 = off (default: %(default)s)")
    p.add_argument("--top-p", type=float, default=1.0, help="1.0 = off (default: %(default)s)")
    p.add_argument("--seed", type=int, default=None, help="makes the sampling repeatable (default: a new one each run)")
    p.add_argument("--no-kv-cache", action="store_true", help="recompute every past token at each step")
    p.add_argument("--compile", action="store_true", help="compile the decode step (CUDA graphs on GPU)")
    p.add_argument(
        "--tune",
        action="store_true",
        help="--compile and, on GPU, tune Inductor's kernels (minutes; no faster for the presets on an H200)",
    )
    p.add_argument("--stats", action="store_true", help="print token counts, time to first token, tokens/s")
    p.add_argument(
        "--device",
        default="auto",
        choices=["auto", "cpu", "cuda"],
        help="auto: cuda if there is one (default: %(default)s)",
    )
    p.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "fp32", "bf16", "fp16"],
        help="auto: bf16 on GPU, fp32 on CPU; bf16 can be faster on CPUs with bf16 instructions (default: %(default)s)",
    )
    p.add_argument(
        "--decode-chunk", type=int, default=None, help="decode steps per compiled call (default: 4 on GPU, else 1)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="muomni", description="Train and run the μOmni Thinker.")
    parser.add_argument("--version", action="version", version=f"muomni {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    parser.commands = sub.choices  # each subcommand's own parser, for the errors found after parsing

    p = sub.add_parser(
        "train",
        help="train a model (no arguments: the built-in default job)",
        epilog="Ctrl-C or SIGTERM: the run finishes its step, writes a checkpoint and exits 130 or 143; the same "
        "command resumes it (resume=auto, the default).",
    )
    _config_args(p)

    p = sub.add_parser("generate", help="complete one or more prompts (several --prompt = one batch)")
    _sampling_args(p)
    p.add_argument("--prompt", action="append", required=True, help="repeat for a batch")
    p.add_argument("--truncate", action="store_true", help="keep the end of a prompt longer than the context")

    p = sub.add_parser("chat", help="interactive, streaming chat; 'exit' or Ctrl-D quits, /reset clears")
    _sampling_args(p)

    p = sub.add_parser("bench", help="measure what each optimization buys, on this machine")
    p.add_argument(
        "what",
        choices=["train", "infer"],
        metavar="{train,infer}",
        help="train: the optimization table; infer: decoding",
    )
    p.add_argument(
        "--config", default="tiny", help="a JSON file or a preset: debug, default, tiny, small (default: %(default)s)"
    )
    p.add_argument("--ckpt", default=None, help="bench infer: use these weights instead of random ones")
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        help="train: timed steps a row (default 20 on a GPU, 3 on a CPU); infer: new tokens (512 and 32)",
    )
    p.add_argument("--out", default=None, help="folder for results.json, results.md and the charts")
    p.add_argument("--vs-hf", action="store_true", help="run the equivalent Hugging Face rows in the same run")
    p.add_argument(
        "--rows", default=None, help="comma-separated row names, e.g. baseline,+all (default: all that apply here)"
    )
    _overrides_arg(p)

    p = sub.add_parser("profile", help="run a few steps under torch.profiler and print where the time goes")
    _config_args(p)
    p.add_argument(
        "--steps", type=int, default=6, help="training steps profiled, after 2 untimed ones (default: %(default)s)"
    )
    p.add_argument(
        "--out",
        default="profile",
        help="folder for the Chrome/Perfetto trace and the memory timeline (default: %(default)s)",
    )
    p.add_argument("--infer", action="store_true", help="also profile decoding steps")

    p = sub.add_parser("plan", help="find the fastest settings that fit a memory budget")
    _config_args(p)
    p.add_argument("--memory", type=float, required=True, help="budget in GiB")
    p.add_argument(
        "--out", default="planned.json", help="where the fastest setting that fits is written (default: %(default)s)"
    )

    p = sub.add_parser(
        "export",
        help="write a Hugging Face folder: LlamaForCausalLM (Qwen2ForCausalLM with qkv_bias)",
        description="Write a checkpoint as a Hugging Face LlamaForCausalLM folder, or as a Qwen2ForCausalLM "
        "folder for a model with q/k/v biases (qkv_bias).",
    )
    p.add_argument("--ckpt", required=True, help="a run folder (its newest checkpoint) or a checkpoint folder")
    p.add_argument("--out", required=True, help="the folder to write")
    return parser


# subcommand -> (module, function taking the parsed args and returning an exit code)
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("muomni.training.commands", "run_train"),
    "generate": ("muomni.inference.commands", "run_generate"),
    "chat": ("muomni.inference.commands", "run_chat"),
    "bench": ("muomni.bench.commands", "run_bench"),
    "profile": ("muomni.bench.profile", "run_profile"),
    "plan": ("muomni.training.plan", "run_plan"),
    "export": ("muomni.hf", "run_export"),
}


def _resolve(command: str) -> Callable[[argparse.Namespace], int] | None:
    """The function that runs ``command``, or None when this version does not have it yet."""
    module, func = COMMANDS[command]
    try:
        return getattr(importlib.import_module(module), func, None)
    except ModuleNotFoundError as e:
        if e.name == module:
            return None
        raise


class Terminated(BaseException):
    """SIGTERM, raised where the main thread is, so that what a command was writing is removed on the way out
    (a half-written export or checkpoint folder, a token cache's temporary file), as after Ctrl-C. Not a
    KeyboardInterrupt: chat's Ctrl-C ends only the reply, SIGTERM ends the process."""


def _raise_terminated(signum: int, frame: object) -> NoReturn:
    raise Terminated


@contextmanager
def _sigterm_unwinds() -> Iterator[None]:
    """While active, SIGTERM raises :class:`Terminated` instead of ending the process where it stands.
    Training replaces it with its own handler while it runs, and restores it after."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


_HELD = (signal.SIGINT, signal.SIGTERM)


def _resolve_holding_interrupts(command: str) -> Callable[[argparse.Namespace], int] | None:
    """:func:`_resolve`, with Ctrl-C and SIGTERM held until the import is done, then raised.

    Importing a command's module imports torch and numpy (a second or more). An interrupt that lands inside
    such an import can leave the library half loaded, and some catch it on the way: the next import then
    fails with an unrelated error (seen: RecursionError, "module 'numpy' has no attribute 'intp'") and
    exit 1, where Ctrl-C must give exit 130 and one line."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        return _resolve(command)
    held: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, frame: held.append(signum)) for sig in _HELD}
    try:
        return _resolve(command)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if signal.SIGTERM in held:
            raise Terminated
        if held:
            raise KeyboardInterrupt


def _speaks_for_all_ranks() -> bool:
    """Under torchrun rank 0 speaks for all of what the ranks share: their config and its warnings."""
    return os.environ.get("RANK", "0") == "0"


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
    if not _speaks_for_all_ranks():
        return
    print(f"muomni: warning: {message}", file=sys.stderr)


def _out_of_memory(e: BaseException) -> bool:
    """Whether ``e`` says the machine ran out of memory: numpy's errors are MemoryErrors; torch's are
    RuntimeErrors (its CPU allocator's, or ``torch.OutOfMemoryError`` on a GPU), told by name so that
    this module need not import torch."""
    if isinstance(e, MemoryError):
        return True
    return isinstance(e, RuntimeError) and (type(e).__name__ == "OutOfMemoryError" or "can't allocate memory" in str(e))


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # key=value overrides may come after options (argparse alone would only take them before).
    args, extra = parser.parse_known_args(argv)
    if extra:
        if not hasattr(args, "overrides") or any(e.startswith("-") or "=" not in e for e in extra):
            parser.commands[args.command].error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = [*args.overrides, *extra]
    warnings.showwarning = _show_warning
    with _sigterm_unwinds():
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    """Run the parsed command; a user error, a job too large for the machine, a full disk, Ctrl-C and
    SIGTERM end it with one line on stderr and their exit code."""
    try:
        run = _resolve_holding_interrupts(args.command)
        if run is None:
            print(f"muomni: error: '{args.command}' is not yet available in this version", file=sys.stderr)
            return EXIT_USER_ERROR
        with closed_stdout_dropped():  # `muomni train | head` must not cost the run its steps
            return int(run(args) or 0)
    except UserError as e:
        if _speaks_for_all_ranks() or not isinstance(e, ConfigError):  # another error may be one rank's own
            print(f"muomni: error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except (MemoryError, RuntimeError) as e:
        # The last resort: training retries a CUDA out-of-memory step itself (auto_fit); what still runs out is
        # a job too large for this machine, which the user fixes by asking for less.
        if not _out_of_memory(e):
            raise
        print(
            f"muomni: error: not enough memory for this job ({_first_line(e)}): lower batch_size, ctx_len or the "
            "model's size",
            file=sys.stderr,
        )
        return EXIT_USER_ERROR
    except OSError as e:
        if e.errno not in _DISK_FULL:
            raise
        if e.filename:
            print(
                f"muomni: error: cannot write {e.filename} ({e.strerror}): free space there, or write elsewhere",
                file=sys.stderr,
            )
        else:  # print's own write: stdout goes to a full disk
            print(f"muomni: error: cannot write the output ({e.strerror})", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("muomni: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Terminated:
        if _speaks_for_all_ranks():  # torchrun sends it to every rank
            print("muomni: terminated (SIGTERM)", file=sys.stderr)
        return EXIT_TERMINATED
