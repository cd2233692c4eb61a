"""Benchmark output: the table in the founding document's format, results.json, results.md and a PNG chart."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from muomni.bench.options import json_object

GIB = 2**30


def _fmt_rate(x: float | None) -> str:
    if x is None or not math.isfinite(x):
        return "-"
    if x >= 1e6:
        return f"{x / 1e6:.2f}M"
    if x >= 1e3:
        return f"{x / 1e3:.1f}k"
    return f"{x:.0f}"


def _fmt(x: float | None, spec: str, suffix: str = "") -> str:
    return "-" if x is None or not math.isfinite(x) else f"{x:{spec}}{suffix}"


def _mfu(row: dict) -> str:
    """MFU in percent; "n/a" where the device's peak is not known (a CPU, a GPU not in the table)."""
    return "n/a" if row.get("mfu") is None else _fmt(100 * row["mfu"], ".1f", "%")


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def _split_note(r: dict[str, Any]) -> str:
    """What a row ran under that its name does not say: a memory budget, a split auto_fit changed."""
    notes = []
    if r.get("memory_budget_gib"):
        notes.append(f"budget {r['memory_budget_gib']:.2f} GiB")
    if r.get("batch_size") and r["batch_size"] != r["config"]["batch_size"]:
        notes.append(f"ran {r['batch_size']} x {r['accumulation']}")
    return f" ({', '.join(notes)})" if notes else ""


def train_table(rows: list[dict[str, Any]]) -> str:
    """Markdown table of training rows: speed, memory, MFU and quality relative to the baseline row."""
    ok = [r for r in rows if not r.get("error")]
    base = next((r for r in ok if r["name"] == "baseline" and r["framework"] == "muomni"), None)
    hf = {r["name"]: r for r in rows if r["framework"] == "hf" and not r.get("error")}
    head = "| row | tokens/s | speed | peak memory | memory | MFU | val loss | quality | HF tokens/s | muomni/HF |"
    lines = [head, "|---" * (head.count("|") - 1) + "|"]
    for r in rows:
        if r["framework"] != "muomni":
            continue
        if r.get("error"):
            lines.append(f"| {r['name']} | failed: {r['error']} |||||||||")
            continue
        speed = _ratio(r["tokens_per_s"], base and base["tokens_per_s"])
        mem = _ratio(r["peak_memory_bytes"], base and base["peak_memory_bytes"])
        quality = None
        if base and r.get("val_loss") is not None and base.get("val_loss"):
            quality = 100.0 * (r["val_loss"] - base["val_loss"]) / base["val_loss"]
        peer = hf.get(r.get("hf_row", ""))
        lines.append(
            f"| {r['name']}{_split_note(r)} | {_fmt_rate(r['tokens_per_s'])} | {_fmt(speed, '.2f', 'x')} "
            f"| {r['peak_memory_bytes'] / GIB:.2f} GiB | {_fmt(mem, '.2f', 'x')} "
            f"| {_mfu(r)} | {_fmt(r.get('val_loss'), '.4f')} "
            f"| {_fmt(quality, '+.2f', '%')} | {_fmt_rate(peer and peer['tokens_per_s'])} "
            f"| {_fmt(_ratio(r['tokens_per_s'], peer and peer['tokens_per_s']), '.2f', 'x')} |"
        )
    if hf:
        lines += ["", "| Hugging Face row | tokens/s | peak memory | MFU | val loss |", "|---|---|---|---|---|"]
        for r in hf.values():
            lines.append(
                f"| {r['name']} | {_fmt_rate(r['tokens_per_s'])} | {r['peak_memory_bytes'] / GIB:.2f} GiB "
                f"| {_mfu(r)} | {_fmt(r.get('val_loss'), '.4f')} |"
            )
    return "\n".join(lines)


# What write_results writes: an --out holding these only, with a results.json of bench's (see
# wrote_results), may be written again.
RESULT_FILES = frozenset({"results.json", "results.md", "chart.png"})
BENCH_KINDS = ("train", "infer")


def wrote_results(out: Path) -> bool:
    """Whether ``out`` holds results bench wrote: a results.json of the form :func:`write_results` writes
    (the kind of bench, the machine's info, the rows). It is written first, so every folder bench began to
    write holds one; a user's own results.md or chart.png beside none is not written over."""
    data = json_object(out / "results.json")
    return (
        data is not None
        and data.get("kind") in BENCH_KINDS
        and isinstance(data.get("info"), dict)
        and isinstance(data.get("rows"), list)
    )


def write_results(
    out: Path, kind: str, info: dict[str, Any], rows: list[dict[str, Any]], table: str, draw: bool = True
) -> None:
    """results.json (every raw number), results.md (the table with its command and versions) and, with
    ``draw``, chart.png. Written after every row too, so a run cut short keeps the rows it measured."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"kind": kind, "info": info, "rows": rows}, indent=2) + "\n")
    header = [f"# muomni bench {kind}", ""]
    header += [f"- {key}: {value}" for key, value in info.items() if not isinstance(value, dict)]
    (out / "results.md").write_text("\n".join([*header, "", table, ""]), encoding="utf-8")
    if draw:
        chart(out / "chart.png", kind, rows)


def chart(path: Path, kind: str, rows: list[dict[str, Any]]) -> bool:
    """Two bar charts: throughput and peak memory per row. Skipped (False) without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    ok = [r for r in rows if not r.get("error") and r.get("tokens_per_s")]
    if not ok:
        return False
    labels = [r["name"] if r["framework"] == "muomni" or r["name"].startswith("HF") else f"HF {r['name']}" for r in ok]
    colors = ["tab:blue" if r["framework"] == "muomni" else "tab:orange" for r in ok]
    fig, axes = plt.subplots(1, 2, figsize=(max(8, 1.1 * len(ok) + 4), 4.5))
    rates = [r["tokens_per_s"] for r in ok]
    axes[0].bar(labels, rates, color=colors)
    axes[0].set_title("tokens/s\n(higher is better)")
    if max(rates) > 100 * min(rates):  # decoding rows span orders of magnitude: keep the slow ones visible
        axes[0].set_yscale("log")
        axes[0].set_title("tokens/s, log scale\n(higher is better)")
    # A row without a measured peak (Hugging Face's decoding rows) gets no bar, rather than a bar of 0.
    memory = [r["peak_memory_bytes"] / GIB if r.get("peak_memory_bytes") else math.nan for r in ok]
    axes[1].bar(labels, memory, color=colors)
    axes[1].set_title("peak memory, GiB\n(lower is better; no bar: not measured)")
    for ax in axes:
        ax.tick_params(axis="x", rotation=60)
    fig.suptitle(f"muomni bench {kind}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
