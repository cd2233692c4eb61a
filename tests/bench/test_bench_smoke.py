"""The benchmark commands on the debug preset: structure of the outputs, every number positive and finite.

Values are not asserted (they are measurements); that each row ran, and its numbers are sane, is.
"""

from __future__ import annotations

import importlib.util
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest


def _muomni(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "muomni", *args], cwd=cwd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


def _positive(x: float) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    text = "\n\n".join(f"def function_{i}(x):\n    return x * {i} + {i % 7}\n" for i in range(400))
    path = tmp_path / "corpus.txt"
    path.write_text(text, encoding="utf-8")
    return path


def test_bench_train_table(tmp_path: Path, corpus: Path) -> None:
    out = tmp_path / "out"
    proc = _muomni(
        "bench",
        "train",
        "--config",
        "debug",
        "--steps",
        "2",
        "--rows",
        "+flash,+chunked_ce",
        "--vs-hf",
        "--out",
        str(out),
        f"train_text={corpus}",
        "device=cpu",
        cwd=tmp_path,
    )
    assert "| baseline |" in proc.stdout and "| +flash |" in proc.stdout
    results = json.loads((out / "results.json").read_text())
    names = [(r["framework"], r["name"]) for r in results["rows"]]
    assert names == [
        ("muomni", "baseline"),
        ("hf", "fp32 eager"),
        ("muomni", "+flash"),
        ("hf", "bf16 sdpa"),
        ("muomni", "+chunked_ce"),
    ]
    # Same initial weights, data order, optimizer and schedule: the fp32 rows must learn the same thing.
    assert results["rows"][0]["val_loss"] == pytest.approx(results["rows"][1]["val_loss"], rel=1e-4)
    for row in results["rows"]:
        assert "error" not in row, row
        assert _positive(row["tokens_per_s"]) and _positive(row["peak_memory_bytes"])
        assert len(row["step_times"]) == 2 and all(_positive(t) for t in row["step_times"])
        assert math.isfinite(row["val_loss"])
    assert results["info"]["torch"] and (out / "results.md").exists() and (out / "chart.png").stat().st_size > 0


def test_hf_checkpointing_row_turns_it_on_without_a_deprecation_warning() -> None:
    pytest.importorskip("transformers")
    import warnings

    import torch

    from muomni.bench.train_worker import _hf_model
    from muomni.config import load_config

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # transformers 5.24 deprecates gradient_checkpointing_enable
        model = _hf_model(load_config("debug"), {"hf_attn": "sdpa", "hf_checkpointing": True}, torch.device("cpu"))
        on = getattr(model, "is_activation_checkpointing", None)
        assert on if on is not None else model.is_gradient_checkpointing


def test_hf_rows_take_the_accumulated_batch(monkeypatch: pytest.MonkeyPatch, corpus: Path, tmp_path: Path) -> None:
    """A Hugging Face row reads batch_size x accumulation windows a step, as muomni's rows do (it read one
    micro-batch, and was credited the tokens of all of them)."""
    pytest.importorskip("transformers")
    from muomni.bench.train_worker import run_hf
    from muomni.config import load_config
    from muomni.data import WindowStream

    taken: list[int] = []
    real_take = WindowStream.take
    monkeypatch.setattr(WindowStream, "take", lambda self, n: taken.append(n) or real_take(self, n))
    monkeypatch.setenv("MUOMNI_CACHE", str(tmp_path / "cache"))
    cfg = load_config(
        "debug",
        overrides={"train_text": str(corpus), "batch_size": 2, "gradient_accumulation_steps": 3, "warmup_steps": 1},
    )
    run_hf(cfg, {"hf_attn": "sdpa", "warmup": 1, "steps": 1})
    assert taken == [2] * 6  # two steps of 3 micro-batches of 2


@pytest.mark.parametrize("tied", [False, True])
def test_the_bandwidth_bound_counts_the_bytes_a_step_reads(tied: bool) -> None:
    """A batch-1 step reads one row of the embedding table, unless the table is also the output head."""
    from muomni.bench.infer import step_weight_bytes
    from muomni.config import load_config
    from muomni.models.thinker import Thinker

    model = Thinker(load_config("debug", overrides={"tie_embeddings": tied}))
    every = sum(p.numel() * p.element_size() for p in model.parameters())
    vocab, width = model.model.embed_tokens.weight.shape
    assert step_weight_bytes(model) == (every if tied else every - (vocab - 1) * width * 4)


def test_hf_decode_rows_leave_out_the_prompt_and_first_token(monkeypatch: pytest.MonkeyPatch) -> None:
    """HF's rows are counted as muomni's are: decode steps over their time, the prompt's pass and the first
    token (timed as a generation of one token) left out."""
    pytest.importorskip("transformers")
    from muomni.bench import infer
    from muomni.config import load_config
    from muomni.models.thinker import Thinker

    timed = {8: 1.0, 1: 0.2}  # seconds of generate for that many new tokens
    monkeypatch.setattr(infer, "_hf_seconds", lambda hf, prompt, new, kwargs, device: timed[new])
    rows = list(infer.hf_rows(Thinker(load_config("debug")), 8))
    assert [r["tokens_per_s_total"] for r in rows] == [pytest.approx(7 / 0.8)] * 2
    assert [r["time_to_first_token_s"] for r in rows] == [0.2, 0.2]


def test_bench_infer_rows_by_device() -> None:
    from muomni.bench.infer import row_specs

    on_cpu = [name for name, _ in row_specs(cuda=False)]
    assert on_cpu[:4] == ["no KV cache", "KV cache", "KV cache + no_grad", "KV cache + compile"]
    assert on_cpu[4:6] == ["KV cache + compile + sampling", "KV cache + compile + top-p"]
    assert on_cpu[6:] == [
        "batch 4",
        "batch 16",
        "batch 64",
        "batch 4 + compile",
        "batch 16 + compile",
        "batch 64 + compile",
    ]
    on_gpu = [name for name, _ in row_specs(cuda=True)]
    assert "KV cache + compile + tune" in on_gpu and "batch 16" not in on_gpu and "batch 16 + compile" in on_gpu
    sampled = {name: kw["sampling"] for name, kw in row_specs(cuda=False) if "sampling" in kw}
    assert [(s.temperature, s.top_k, s.top_p) for s in sampled.values()] == [(0.8, 0, 1.0), (0.8, 0, 0.9)]


# One of each kind of row (the rows left out compile more of the same, for half a minute).
TABLE_ROWS = (
    "no KV cache,KV cache,KV cache + no_grad,KV cache + compile,KV cache + compile + top-p,batch 16,batch 64 + compile"
)


def test_bench_infer_table(tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = ["bench", "infer", "--config", "debug", "--steps", "6", "--out", str(out), "device=cpu"]
    proc = _muomni(*args, "--rows", TABLE_ROWS, cwd=tmp_path)
    results = json.loads((out / "results.json").read_text())
    rows = results["rows"]
    names = [r["name"] for r in rows]
    assert names == TABLE_ROWS.split(",")
    # Which decode launches used PDL is recorded with the timings: none on a CPU (None: no Triton here).
    assert results["info"]["decode_pdl_max_batch"] in (0, None)
    assert "| KV cache |" in proc.stdout
    for row in rows:
        assert _positive(row["tokens_per_s_total"]) and _positive(row["ms_per_step"])
    sampling = {r["name"]: r["sampling"] for r in rows}
    assert sampling["KV cache + compile + top-p"] == {"temperature": 0.8, "top_k": 0, "top_p": 0.9}
    assert sampling["KV cache"] == {"temperature": 0.0, "top_k": 0, "top_p": 1.0}
    # The comparisons the claims make, each row against its reference row.
    speed = {r["name"]: r["tokens_per_s_total"] for r in rows}
    versus = {r["name"]: r["speed_vs"] for r in rows if "speed_vs" in r}
    cached, batched = speed["KV cache"] / speed["no KV cache"], speed["batch 16"] / speed["KV cache"]
    assert versus["KV cache"] == {"row": "no KV cache", "ratio": pytest.approx(cached)}
    assert versus["batch 16"] == {"row": "KV cache", "ratio": pytest.approx(batched)}
    top_p = speed["KV cache + compile + top-p"] / speed["KV cache + compile"]
    assert versus["KV cache + compile + top-p"] == {"row": "KV cache + compile", "ratio": pytest.approx(top_p)}
    assert versus["batch 64 + compile"]["row"] == "KV cache + compile"
    assert "no KV cache" not in versus  # the reference of the others, compared with nothing
    line = next(line for line in proc.stdout.splitlines() if line.startswith("| KV cache + compile |"))
    assert f"| {versus['KV cache + compile']['ratio']:.2f}x KV cache |" in line


def test_bench_infer_runs_only_the_rows_asked_for(tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = ["bench", "infer", "--config", "debug", "--steps", "4", "--out", str(out), "device=cpu"]
    _muomni(*args, "--rows", "KV cache,batch 4", cwd=tmp_path)
    assert [r["name"] for r in json.loads((out / "results.json").read_text())["rows"]] == ["KV cache", "batch 4"]
    cmd = [sys.executable, "-m", "muomni", *args, "--rows", "KV cache,warp"]
    bad = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "unknown bench row 'warp'" in bad.stderr


def test_profile_writes_trace(tmp_path: Path, corpus: Path) -> None:
    out = tmp_path / "prof"
    proc = _muomni(
        "profile",
        "--config",
        "debug",
        "--steps",
        "1",
        "--out",
        str(out),
        f"train_text={corpus}",
        "device=cpu",
        cwd=tmp_path,
    )
    assert "share of step time: attention" in proc.stdout
    trace = json.loads((out / "trace_train.json").read_text())
    assert any(e.get("cat") == "cpu_op" and e["dur"] > 0 for e in trace["traceEvents"])
    times, sizes = json.loads((out / "memory_timeline.json").read_text())
    assert times and max(max(s) for s in sizes) > 0  # the allocations of the steps, not an empty timeline


def test_memory_timeline_names_the_cuda_device_with_its_index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The timeline keeps the allocations whose device equals the one asked for, and "cuda" equals no
    # allocation's "cuda:0": asked for "cuda", it came out empty on an H200.
    from types import SimpleNamespace

    import torch

    from muomni.bench.profile import _memory_timeline

    asked: list[str] = []
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    prof = SimpleNamespace(export_memory_timeline=lambda path, device: asked.append(device))
    _memory_timeline(prof, tmp_path, torch.device("cuda"))
    _memory_timeline(prof, tmp_path, torch.device("cpu"))
    assert asked == ["cuda:0", "cpu"]


def test_plan_writes_a_valid_config(tmp_path: Path, corpus: Path) -> None:
    from muomni.config import load_config

    planned = tmp_path / "planned.json"
    proc = _muomni(
        "plan",
        "--config",
        "debug",
        "--memory",
        "8",
        "--out",
        str(planned),
        f"train_text={corpus}",
        "device=cpu",
        cwd=tmp_path,
    )
    assert "| micro-batch x accumulation |" in proc.stdout
    # Each candidate is reported as it is measured, before the table at the end.
    assert proc.stdout.index("muomni: plan: candidate 1: micro-batch x accumulation 1 x") < proc.stdout.index("| micro")
    cfg = load_config(planned)
    assert cfg.effective_batch_size == load_config("debug").effective_batch_size


def test_plan_nothing_fits_is_a_user_error(tmp_path: Path, corpus: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "muomni",
            "plan",
            "--config",
            "debug",
            "--memory",
            "0.001",
            "--out",
            str(tmp_path / "p.json"),
            f"train_text={corpus}",
            "device=cpu",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 2
    assert "nothing fits in 0.001 GiB" in proc.stderr
    if Path("/proc/self/status").exists():  # the process's own floor is known: a smaller model cannot help
        assert re.search(r"takes \d+\.\d\d GiB with torch loaded, before any model; give --memory above", proc.stderr)
    else:
        assert "smallest candidate needed" in proc.stderr


def test_plan_points_at_the_model_only_when_the_budget_is_above_the_process_floor() -> None:
    from muomni.training.plan import nothing_fits

    gib = 2**30
    tried = [{"peak_memory_bytes": 0.9 * gib, "process_floor_bytes": 0.45 * gib}]
    assert nothing_fits(tried, 0.4).endswith("0.45 GiB with torch loaded, before any model; give --memory above that")
    assert nothing_fits(tried, 0.6) == (
        "nothing fits in 0.6 GiB: the smallest candidate needed 0.90 GiB; lower ctx_len or the model size"
    )
    assert nothing_fits([{"peak_memory_bytes": 0.9 * gib}], 0.4).endswith("lower ctx_len or the model size")  # a GPU
    assert nothing_fits([{"error": "worker exited 1"}], 0.4) == "nothing fits in 0.4 GiB: every candidate failed"


def test_bench_infer_keeps_the_rows_measured_before_a_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import argparse

    from muomni.bench import infer

    real_row = infer._row

    def row_or_fail(model, name, **kw):  # noqa: ANN001, ANN003, ANN202
        if name == "batch 4":
            raise RuntimeError("the machine went away")
        return real_row(model, name, **kw)

    monkeypatch.setattr(infer, "_row", row_or_fail)
    out = tmp_path / "out"
    args = argparse.Namespace(
        config="debug", overrides=["device=cpu"], ckpt=None, steps=2, out=str(out), rows="KV cache,batch 4", vs_hf=False
    )
    with pytest.raises(RuntimeError):
        infer.bench_infer(args)
    assert [r["name"] for r in json.loads((out / "results.json").read_text())["rows"]] == ["KV cache"]


def test_chart_draws_no_memory_bar_for_a_row_without_a_measured_peak(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Hugging Face's decoding rows have no peak of their own: no bar, rather than a bar of 0 GiB."""
    pytest.importorskip("matplotlib")
    from matplotlib.axes import Axes

    from muomni.bench.report import GIB, chart

    heights: list[list[float]] = []
    real_bar = Axes.bar
    monkeypatch.setattr(Axes, "bar", lambda self, x, h, **kw: heights.append(list(h)) or real_bar(self, x, h, **kw))
    rows = [
        {"name": "KV cache", "framework": "muomni", "tokens_per_s": 90.0, "peak_memory_bytes": GIB},
        {"name": "HF generate, static cache", "framework": "hf", "tokens_per_s": 60.0, "peak_memory_bytes": None},
    ]
    assert chart(tmp_path / "chart.png", "infer", rows)
    rates, memory = heights
    assert rates == [90.0, 60.0] and memory[0] == 1.0 and math.isnan(memory[1])


def test_device_breakdown_sorts_kernels_by_kind_and_counts_idle_time_once() -> None:
    from muomni.bench.device_time import MUOMNI_KERNELS, device_breakdown, kernel_kind

    assert kernel_kind("cudnn_generated_fort_native_sdpa_sm90_flash_bprop_wgmma_f16") == "attention"
    assert kernel_kind("nvjet_sm90_tst_256x128_64x4_1x2_h_bz_coopA_NNT") == "matrix products"
    assert kernel_kind("triton_poi_fused__unsafe_view_mul_silu_8") == "fused elementwise (Triton)"
    assert kernel_kind("void at::native::multi_tensor_apply_kernel<FusedAdamMathFunctor>") == "optimizer"
    assert kernel_kind("_sum_of_squares_kernel") == kernel_kind("_adamw_kernel") == "optimizer"  # bf16 weights
    assert kernel_kind("void at::native::elementwise_kernel<128, 2, at::native::gpu_kernel_impl<>>") == (
        "elementwise (PyTorch)"
    )
    if importlib.util.find_spec("triton") is not None:  # muomni's kernels by their function names
        assert kernel_kind("_cross_entropy_rows_kernel") == kernel_kind("_norm_gate_up") == MUOMNI_KERNELS
        assert kernel_kind("_merge_splits") == MUOMNI_KERNELS  # launched by split_kv
        assert kernel_kind("_partial_attention") == "attention"
    assert kernel_kind("_some_other_kernel") == "other"
    # Two steps: a product 0-10 us overlapping an elementwise kernel 5-12 on another stream, a gap to 20,
    # attention 20-30; the device ran nothing for 8 us of the 30.
    kernels = [("nvjet_gemm", 0.0, 10.0), ("triton_poi_add", 5.0, 7.0), ("flash_fwd", 20.0, 10.0)]
    got = device_breakdown(kernels, steps=2)
    assert got == {
        "matrix products": 5.0,
        "fused elementwise (Triton)": 3.5,
        "attention": 5.0,
        "idle": 4.0,
        "span": 15.0,
    }


def test_critical_path_gives_each_kernel_what_it_adds_not_its_duration() -> None:
    """Decode kernels launched with PDL start while the one before runs and wait inside: a duration counts
    that wait. What a kernel adds is its end past the latest end before it; the sums are the span."""
    from muomni.bench.device_time import critical_path, critical_path_lines

    # Two steps' worth: a 0-10; b starts at 2 and waits, 2-14; e inside a, 3-4; c 12-15; the device idle to
    # 20; d 20-26.
    kernels = [("a", 0.0, 10.0), ("b", 2.0, 12.0), ("e", 3.0, 1.0), ("c", 12.0, 3.0), ("d", 20.0, 6.0)]
    got = critical_path(kernels, steps=2)
    assert got == {
        "a": (5.0, 0.0, 0.5),
        "b": (2.0, 0.0, 0.5),
        "e": (0.0, 0.0, 0.5),
        "c": (0.5, 0.0, 0.5),
        "d": (3.0, 2.5, 0.5),
    }
    assert sum(b + i for b, i, _ in got.values()) == 26.0 / 2  # the span, per step
    header, first, *rest = critical_path_lines(kernels, steps=2, n=2)
    assert header.startswith("13.0 us on the device (10.5 busy, 2.5 idle)")
    assert first.split() == ["3.00", "2.50", "0.5", "d"] and rest[0].split() == ["5.00", "0.00", "0.5", "a"]
    assert len(rest) == 1


def test_top_kernels_sums_each_kernels_launches_and_ranks_them_by_time() -> None:
    from muomni.bench.device_time import top_kernels

    # Two steps: a product launched twice a step (10 us each), an elementwise kernel once a step (30 us).
    kernels = [("nvjet_gemm", t, 10.0) for t in (0, 20, 100, 120)] + [("triton_poi_add", t, 30.0) for t in (40, 140)]
    header, first, second = top_kernels(kernels, steps=2)
    assert "2 distinct" in header
    assert first.split()[:4] == ["30.0", "1.0", "30.0", "fused"] and first.endswith("triton_poi_add")
    assert second.split()[:4] == ["20.0", "2.0", "10.0", "matrix"] and second.endswith("nvjet_gemm")
    assert len(top_kernels(kernels, steps=2, n=1)) == 2


def test_infer_rows_are_compared_with_their_reference_rows() -> None:
    """What the table's ``speed vs`` column says, for the rows of a GPU run, without running any."""
    from muomni.bench.infer import speed_versus

    speeds = {"no KV cache": 100.0, "KV cache": 110.0, "KV cache + no_grad": 99.0, "KV cache + compile": 3300.0,
              "KV cache + compile + tune": 3630.0, "batch 16 + compile": 33000.0,
              "HF generate, static cache": 550.0}  # fmt: skip
    rows = [{"name": name, "tokens_per_s_total": speed} for name, speed in speeds.items()]
    assert speed_versus(rows) == {
        "KV cache": (pytest.approx(1.1), "no KV cache"),
        "KV cache + no_grad": (pytest.approx(0.9), "KV cache"),
        "KV cache + compile": (pytest.approx(30.0), "KV cache"),
        "KV cache + compile + tune": (pytest.approx(1.1), "KV cache + compile"),
        "batch 16 + compile": (pytest.approx(10.0), "KV cache + compile"),
        "HF generate, static cache": (pytest.approx(1 / 6), "KV cache + compile"),
    }
    # A reference that did not run (``--rows``) leaves its rows uncompared.
    assert speed_versus([r for r in rows if r["name"] != "KV cache + compile"]) == {
        "KV cache": (pytest.approx(1.1), "no KV cache"),
        "KV cache + no_grad": (pytest.approx(0.9), "KV cache"),
    }


def test_device_shares_count_each_kernel_once_the_autograd_threads_as_backward_and_bare_launches_by_range() -> None:
    # The profiler's own device total of a range adds the span the range draws on the device timeline to its
    # operations' kernels (train_step read 177% of the device's time on an H200), and on CUDA the autograd
    # engine launches the backward's kernels from a thread of its own, outside the training thread's ranges.
    # A bare Triton launch (MasterWeightAdamW's) is linked to no host operation: only the span its range
    # draws on the device timeline holds it (the optimizer read 0.2% of an H200's time for 3.6%).
    from types import SimpleNamespace

    from torch.autograd import DeviceType

    from muomni.bench.profile import _shares

    def op(name: str, thread: int, kernels: dict[str, float], parent: object = None) -> SimpleNamespace:
        kernels_ = [SimpleNamespace(name=k, duration=us) for k, us in kernels.items()]
        return SimpleNamespace(
            name=name, thread=thread, device_type=DeviceType.CPU, kernels=kernels_, cpu_parent=parent
        )

    def device(name: str, start: float, us: float, annotation: bool = False) -> SimpleNamespace:
        span = SimpleNamespace(start=start, elapsed_us=lambda: us)
        return SimpleNamespace(name=name, device_type=DeviceType.CUDA, time_range=span, is_user_annotation=annotation)

    step = op("train_step", 1, {"train_step": 150.0})  # its span on the device timeline: not a kernel
    forward = op("forward", 1, {"forward": 40.0}, step)
    backbone = op("backbone", 1, {"backbone": 30.0}, forward)
    attention = op("attention", 1, {"attention": 12.0}, backbone)
    optimizer = op("optimizer", 1, {}, step)
    engine = op("autograd::engine::evaluate_function: MmBackward0", 7, {"elementwise": 5.0})
    events = [
        step,
        op("data", 1, {}, step),
        forward,
        backbone,
        attention,
        op("aten::mm", 1, {"gemm": 15.0}, forward),  # the output head: forward, outside the backbone
        op("aten::_flash_attention_forward", 1, {"flash_fwd": 10.0}, attention),
        op("backward", 1, {}, step),
        optimizer,
        op("aten::_foreach_mul_", 1, {"adam": 5.0}, optimizer),
        op("muomni::adamw", 1, {"muomni::adamw": 5.0}, optimizer),  # its launch: no operation, no kernel
        engine,
        op("aten::mm", 7, {"gemm": 55.0}, engine),
        device("train_step", 0.0, 150.0, annotation=True),  # holds every kernel, the unlinked memset too
        device("muomni::adamw", 90.0, 5.0, annotation=True),
        *(device(n, t, us) for n, t, us in [("gemm", 0, 15), ("flash_fwd", 15, 10), ("elementwise", 25, 5),
                                             ("gemm", 30, 55), ("adam", 85, 5), ("_adamw_kernel", 90, 5),
                                             ("memset", 95, 5)]),
    ]  # fmt: skip
    shares = _shares(events, cuda=True)
    assert shares == {
        "attention": pytest.approx(0.10),
        "mlp": None,  # never labelled
        "loss": pytest.approx(0.15),
        "backward": pytest.approx(0.60),
        "optimizer": pytest.approx(0.10),  # the linked 5 us and the bare launch's 5 us inside muomni::adamw
        "data": 0.0,
        "unlinked": pytest.approx(0.05),  # the memset, launched by none of the operations, in no range but the step
    }


def test_train_row_worker_overlaps_steps_and_learns_the_same(
    tmp_path: Path, corpus: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The row worker runs the training loop's overlap itself (the next step launched before this one is read).
    # With the fused AdamW (the GPU's; its kernel runs on CPUs) it must overlap, and learn what the
    # synchronous worker learns, to the bit: the same validation loss after the same steps.
    import torch

    from muomni.bench.train import _spec, rows_for
    from muomni.bench.train_worker import run_row
    from muomni.config import load_config
    from muomni.training import trainer as trainer_module
    from muomni.training.optim import param_groups

    def fused_adamw(model: torch.nn.Module, cfg, device: torch.device) -> torch.optim.AdamW:  # noqa: ANN001
        groups = [{k: v for k, v in g.items() if k != "names"} for g in param_groups(model, cfg.wd)]
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, fused=True)

    monkeypatch.setattr(trainer_module, "build_optimizer", fused_adamw)
    launch = trainer_module.Trainer.launch_step
    aheads: list[int] = []

    def recording(self, batches, ahead=0, stop=False):  # noqa: ANN001, ANN202
        aheads.append(ahead)
        return launch(self, batches, ahead, stop)

    monkeypatch.setattr(trainer_module.Trainer, "launch_step", recording)
    cfg = load_config("debug").replace(train_text=str(corpus), device="cpu", max_steps=5, warmup_steps=1)
    baseline = next(r for r in rows_for(torch.device("cpu")) if r.name == "baseline")
    val_losses = {}
    for overlap in (False, True):
        aheads.clear()
        spec = _spec(cfg, baseline, "muomni", 1, 4)
        spec["config"]["overlap_steps"] = overlap
        result = run_row(spec)
        assert len(result["step_times"]) == 4 and all(_positive(t) for t in result["step_times"])
        assert aheads == ([0] + [1] * 4 if overlap else [0] * 5)
        val_losses[overlap] = result["val_loss"]
    assert val_losses[True] == val_losses[False] and _positive(val_losses[True])


def test_profile_of_compiled_decoding_writes_its_trace_and_what_each_kernel_adds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The pass ``profile --infer`` adds on a GPU, run here on the CPU (where no device kernel is traced):
    it compiles, profiles a whole generation and prints the table's header."""
    from torch.profiler import ProfilerActivity

    from muomni.bench.profile import _profile_compiled_decoding
    from muomni.config import load_config
    from muomni.models.thinker import Thinker

    model = Thinker(load_config("debug", ["n_layers=1"])).eval()
    model.enable_kv_cache(True)
    _profile_compiled_decoding(model, [[3] * 16], tmp_path, [ProfilerActivity.CPU])
    printed = capsys.readouterr().out
    assert "compiled decoding of 48 tokens, per token" in printed
    assert "0.0 us on the device (0.0 busy, 0.0 idle)" in printed
    trace = json.loads((tmp_path / "trace_decode_compiled.json").read_text())
    assert any(e.get("cat") == "cpu_op" for e in trace["traceEvents"])


def test_results_name_the_commit_only_of_the_checkout_muomni_runs_from(tmp_path: Path) -> None:
    """Every results.json says which code measured it; an installed copy inside some other repository (a
    virtual environment in a project's folder) must not take that repository's commit as its own."""
    import shutil
    import subprocess

    import torch

    import muomni
    from muomni.bench.hardware import describe, muomni_version

    assert muomni_version(tmp_path) == muomni.__version__  # no repository
    assert describe(torch.device("cpu"))["muomni_path"] == str(Path(muomni.__file__).resolve().parent)
    if shutil.which("git") is None:
        pytest.skip("no git here")
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t"]
    (tmp_path / "f.txt").write_text("a")
    subprocess.run([*git, "add", "f.txt"], check=True)
    subprocess.run([*git, "commit", "-qm", "a"], check=True)
    head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    (tmp_path / "site-packages").mkdir()
    assert muomni_version(tmp_path / "site-packages") == muomni.__version__  # inside it, not its top
    assert muomni_version(tmp_path) == f"{muomni.__version__} (commit {head})"
    (tmp_path / "f.txt").write_text("b")
    assert muomni_version(tmp_path) == f"{muomni.__version__} (commit {head}+changes)"
