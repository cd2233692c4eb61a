"""What a run tells its user: startup lines, a progress bar, and ``metrics.jsonl``.

``metrics.jsonl`` gets one JSON object per optimizer step (``step``, ``loss``, ``lr``, ``grad_norm`` before
clipping, ``tokens_per_s``, ``effective_batch``, ...) and one per evaluation (``step``, ``val_loss``,
``val_ppl``). Non-finite numbers are written as ``null`` so the file stays strict JSON. On a terminal the
tqdm bar shows the latest step; elsewhere (a log file, CI) a plain line is printed every ``print_freq``
steps instead, so logs are not flooded with carriage returns.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Any

from tqdm import tqdm

METRICS_FILE = "metrics.jsonl"
_LOG_FLOAT_MAX = math.log(sys.float_info.max)  # the largest loss whose exp() is a float
_LOG_MILLION = math.log(1e6)  # perplexities from a million on are shown as 1.23e+06


def _clean(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    return value


def truncate_metrics(path: Path, last_step: int) -> None:
    """Drop the records after ``last_step`` (and any torn last line): a resumed run rewrites them."""
    if not path.is_file():
        return
    keep = []
    # Lines that are not JSON are dropped; bytes that are not UTF-8 (a log appended to by hand, a disk error)
    # must not keep the run from resuming either.
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and record.get("step", 0) <= last_step:
            keep.append(line)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(line + "\n" for line in keep), encoding="utf-8")
    os.replace(tmp, path)


class RunLog:
    """The run's console output and metrics file.

    Args:
        save_dir: the run folder (``metrics.jsonl`` is appended to there).
        start_step: the step the run starts from (0, or a resumed checkpoint's).
        total_steps: the step the run ends at, for the bar.
        print_freq: steps between plain progress lines when the bar is off.
        enabled: False on every process but the main one.
        held: keep the records in memory until :meth:`settle` (a run that replaces another keeps the old
            run's log whole until its own first checkpoint); otherwise the log is cut to ``start_step`` (a
            resumed run rewrites what followed) and appended to at once.
    """

    def __init__(
        self,
        save_dir: Path,
        start_step: int,
        total_steps: int,
        print_freq: int,
        enabled: bool = True,
        held: bool = False,
    ) -> None:
        self.enabled = enabled
        self.print_freq = print_freq
        self.path = save_dir / METRICS_FILE
        self.start_step = start_step
        self._file = None
        self._held: list[str] | None = [] if held else None
        if enabled and not held:
            self.settle()
        show_bar = enabled and sys.stderr.isatty()
        self.bar = tqdm(total=total_steps, initial=start_step, disable=not show_bar, unit="step", dynamic_ncols=True)

    def info(self, message: str) -> None:
        """One line on stdout (above the bar)."""
        if self.enabled:
            tqdm.write(f"muomni: {message}", file=sys.stdout)
            sys.stdout.flush()

    def settle(self) -> None:
        """Cut ``metrics.jsonl`` to the start step, write the held records and append from now on."""
        if not self.enabled or self._file is not None:
            return
        truncate_metrics(self.path, self.start_step)
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (closed in close)
        for line in self._held or []:
            self._file.write(line)
        self._file.flush()
        self._held = None

    def record(self, values: dict[str, Any]) -> None:
        """Append one JSON object to ``metrics.jsonl`` (or hold it, see ``held``)."""
        line = json.dumps({k: _clean(v) for k, v in values.items()}) + "\n"
        if self._file is not None:
            self._file.write(line)
            self._file.flush()
        elif self._held is not None and self.enabled:
            self._held.append(line)

    def step(self, values: dict[str, Any]) -> None:
        """Record an optimizer step and show it on the bar (or as a line every ``print_freq`` steps)."""
        self.record(values)
        if not self.enabled:
            return
        shown = {
            "loss": _fmt(values.get("loss"), ".4f"),
            "lr": _fmt(values.get("lr"), ".2e"),
            "tok/s": _fmt(values.get("tokens_per_s"), ",.0f"),
            "gnorm": _fmt(values.get("grad_norm"), ".3f"),
        }
        if "peak_mem_gib" in values:
            shown["mem"] = _fmt(values["peak_mem_gib"], ".2f") + "GiB"
        if not self.bar.disable:
            self.bar.set_postfix(shown, refresh=False)
            self.bar.update(values["step"] - self.bar.n)
        elif values["step"] % self.print_freq == 0:
            self.info(f"step {values['step']}: " + " ".join(f"{k} {v}" for k, v in shown.items()))

    def evaluation(self, step: int, val_loss: float) -> None:
        """Record an evaluation (``val_loss`` and its perplexity) and print it on one line."""
        self.record({"step": step, "val_loss": val_loss, "val_ppl": perplexity(val_loss)})
        self.info(f"step {step}: val loss {val_loss:.4f}, perplexity {perplexity_text(val_loss)}")

    def close(self) -> None:
        self.bar.close()
        if self._file is not None:
            self._file.close()
            self._file = None


def _fmt(value: float | None, spec: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return str(value)
    return format(value, spec)


def perplexity(loss: float) -> float:
    """``exp(loss)``; inf where that overflows a float (a loss above ~709.78: a diverged run)."""
    return math.inf if loss > _LOG_FLOAT_MAX else math.exp(loss)  # nan stays nan


def perplexity_text(loss: float) -> str:
    """``exp(loss)`` for a log line: ``12.34`` up to a million, then ``1.36e+33``, computed from the loss's base-10
    exponent, so a loss whose perplexity overflows a float is shown all the same (``1.97e+434``)."""
    if math.isnan(loss) or loss == math.inf:
        return str(math.exp(loss))  # "nan", "inf"
    if loss < _LOG_MILLION:
        return f"{math.exp(loss):.2f}"
    exponent, fraction = divmod(loss / math.log(10), 1.0)  # exp(loss) = 10**fraction * 10**exponent
    mantissa = round(10**fraction, 2)
    if mantissa >= 10.0:  # 9.996 is shown as 1.00e+(exponent + 1), as format(x, ".2e") does
        mantissa, exponent = mantissa / 10, exponent + 1
    return f"{mantissa:.2f}e+{int(exponent):02d}"


__all__ = ["METRICS_FILE", "RunLog", "perplexity", "perplexity_text", "truncate_metrics"]
