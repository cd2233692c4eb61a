"""torchrun with 2 CPU processes (gloo), and 2 GPUs (NCCL) where there are: DDP and FSDP learn what one
process learns from the same windows.

2 ranks x batch 2 read exactly the windows 1 process x batch 4 reads, so after a few steps the weights must
match (fp32, dropout off); an FSDP checkpoint written by 2 ranks resumes on 1 rank and on 2; and a rank that
fails ends the whole job with an error in bounded time, after which the run resumes.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from training_helpers import FUSED_MAIN, ROOT, final_weights, overrides, read_metrics, tiny_settings, write_corpus

from muomni.distributed import cpu_unsupported
from muomni.training.checkpoint import MODEL_FILE, checkpoints_dir, load_tensors

STEPS = 4
TOLERANCE = 1e-5
# Why this torch cannot run these on CPUs (None: it can; see muomni.distributed.CPU_MIN_TORCH).
NO_FSDP = cpu_unsupported("fsdp", compiled=False) or cpu_unsupported("fsdp", compiled=True)
NO_COMPILED_DDP = cpu_unsupported("ddp", compiled=True)
needs_fsdp = pytest.mark.skipif(NO_FSDP is not None, reason=str(NO_FSDP))
needs_compiled_ddp = pytest.mark.skipif(NO_COMPILED_DDP is not None, reason=str(NO_COMPILED_DDP))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(
    args: list[str],
    cache: Path,
    procs: int,
    env: dict[str, str] | None = None,
    timeout: float = 120,
    fused: bool = False,
):
    """``muomni train`` on one process, or under torchrun on ``procs`` (a CompletedProcess, text output).
    ``fused``: with the GPU's fused AdamW (:data:`FUSED_MAIN`), so that the GPU's loop runs: steps overlap."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("MUOMNI_TEST_")}
    full_env = {**base, "MUOMNI_CACHE": str(cache), "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **(env or {})}
    launcher = [sys.executable]
    if procs > 1:
        launcher += ["-m", "torch.distributed.run", "--nproc_per_node", str(procs), "--master_port", str(_free_port())]
    if fused:  # torchrun runs a script or a module, not -c
        script = cache.parent / "fused_main.py"
        script.write_text(FUSED_MAIN.replace("; ", "\n") + "\n")
        program = [str(script)] if procs > 1 else ["-c", FUSED_MAIN]
    else:
        program = ["-m", "muomni"]
    cmd = [*launcher, *program, "train", *args]
    return subprocess.run(cmd, cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=timeout)


def _train(
    work: Path,
    name: str,
    procs: int,
    env: dict[str, str] | None = None,
    timeout: float = 120,
    fused: bool = False,
    **changes: Any,
):
    settings = tiny_settings(
        work / "corpus.txt",
        work / name,
        dropout=0.0,
        batch_size=4 // procs,
        max_steps=STEPS,
        checkpoint_freq=2,
        val_freq=2,
        keep_checkpoints=5,
        **changes,
    )
    return _run(overrides(settings), work / "cache", procs, env, timeout, fused)


def _assert_close(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert sorted(got) == sorted(want)
    errors = {k: ((got[k] - want[k]).norm() / want[k].norm()).item() for k in want}
    worst = max(errors, key=errors.get)
    assert errors[worst] < TOLERANCE, f"{worst}: relative error {errors[worst]:.2e}"


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The reference run (1 process, batch 4), a DDP run and an FSDP run (2 processes x batch 2); the same
    with the fused AdamW (``_fused``: 1 process, and DDP, both with steps overlapped)."""
    root = tmp_path_factory.mktemp("dist")
    write_corpus(root / "corpus.txt")
    for name, procs, keys in (
        ("single", 1, {}),
        ("ddp", 2, {"distributed": "ddp"}),
        ("fsdp", 2, {"distributed": "fsdp"}),
        ("ddp_compiled", 2, {"distributed": "ddp", "use_compile": True}),
        ("fsdp_compiled", 2, {"distributed": "fsdp", "use_compile": True}),
        ("single_fused", 1, {}),
        ("ddp_fused", 2, {"distributed": "ddp"}),
    ):
        if (keys.get("distributed") == "fsdp" and NO_FSDP) or (name == "ddp_compiled" and NO_COMPILED_DDP):
            continue
        result = _train(root, name, procs, timeout=600, fused=name.endswith("_fused"), **keys)
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-8000:]
        (root / f"{name}.out").write_text(result.stdout)
        (root / f"{name}.err").write_text(result.stderr)
    return root


def test_ddp_matches_one_process_with_the_global_batch(work: Path) -> None:
    _assert_close(final_weights(work / "ddp"), final_weights(work / "single"))
    out = (work / "ddp.out").read_text()
    assert out.count("muomni: device:") == 1  # only rank 0 prints
    assert "effective batch 4 = 2 x 1 accumulation x 2 processes (ddp, gloo); 128 tokens per step" in out
    losses = [m["loss"] for m in read_metrics(work / "ddp") if "loss" in m]
    want = [m["loss"] for m in read_metrics(work / "single") if "loss" in m]
    assert len(losses) == STEPS and losses == pytest.approx(want, rel=1e-5)  # the mean over ranks is logged


@pytest.mark.parametrize(
    ("compiled", "accumulation"),
    [(False, 2), pytest.param(True, 1, marks=needs_compiled_ddp)],
    ids=["eager-accumulating", "compiled"],
)
def test_ddp_with_bf16_weights_matches_one_process_accumulating_the_same_micro_batches(
    tmp_path: Path, compiled: bool, accumulation: int
) -> None:
    # weight_dtype=bf16: DDP leaves the fp32 weights alone and the bf16 copies' gradients are reduced in fp32
    # (master_weights.CopyGradientMean). 2 ranks x batch 2 read the micro-batches that 1 process x batch 2
    # accumulates, each rank's loss scaled by a power of two more: the same bf16 gradients, summed in fp32.
    # Without the copies' all-reduce each rank steps on its own gradients: the worst weight 0.30 away (eager).
    write_corpus(tmp_path / "corpus.txt")
    bf16 = {"use_amp": True, "amp_dtype": "bf16", "weight_dtype": "bf16", "use_compile": compiled}
    for name, procs, keys in (
        ("single", 1, {"gradient_accumulation_steps": 2 * accumulation}),
        ("ddp", 2, {"distributed": "ddp", "gradient_accumulation_steps": accumulation}),
    ):
        settings = tiny_settings(
            tmp_path / "corpus.txt", tmp_path / name, dropout=0.0, batch_size=2, max_steps=STEPS, **bf16, **keys
        )
        result = _run(overrides(settings), tmp_path / "cache", procs, timeout=600)
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-8000:]
        assert "is not used" not in result.stderr  # compiled: no fallback to eager
    got, want = final_weights(tmp_path / "ddp"), final_weights(tmp_path / "single")
    _assert_close(got, want)
    if accumulation == 1:  # a + b on both sides; accumulating, the ranks sum the windows in another order
        assert all(torch.equal(got[k], want[k]) for k in want)
    for key in ("loss", "grad_norm"):  # the norm of the mean gradient, taken after the reduction
        values = [m[key] for m in read_metrics(tmp_path / "ddp") if key in m]
        assert values == pytest.approx([m[key] for m in read_metrics(tmp_path / "single") if key in m], rel=1e-6)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs")
@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_two_gpus_match_one_gpu_in_fp32(tmp_path: Path, mode: str) -> None:
    # NCCL's reductions on GPUs. In fp32 and with SGD (linear in the gradient): with bf16 autocast, the GPU
    # default, another split of the batch moves the weights by rounding alone (2 H200s: 3.7e-4 with SGD,
    # 3.6e-3 with AdamW, whose first steps are lr x sign(g)); fp32 gave 5.6e-8.
    write_corpus(tmp_path / "corpus.txt")
    fp32_sgd = {"device": "cuda", "use_amp": False, "optimizer": "sgd", "lr": 0.05, "max_grad_norm": 0.0}
    for name, procs, keys in (("single", 1, {}), (mode, 2, {"distributed": mode})):
        result = _train(tmp_path, name, procs, **fp32_sgd, **keys)
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-8000:]
    _assert_close(final_weights(tmp_path / mode), final_weights(tmp_path / "single"))


@pytest.mark.parametrize(
    "mode", [pytest.param("ddp", marks=needs_compiled_ddp), pytest.param("fsdp", marks=needs_fsdp)]
)
def test_compiled_ranks_match_one_eager_process(work: Path, mode: str) -> None:
    # The compiled loss (chunked cross-entropy in the graph) under the wrapper: the head is synced or sharded too.
    assert "is not used" not in (work / f"{mode}_compiled.err").read_text()  # no fallback to eager
    _assert_close(final_weights(work / f"{mode}_compiled"), final_weights(work / "single"))


@needs_fsdp
def test_fsdp_matches_one_process_and_writes_a_plain_checkpoint(work: Path) -> None:
    _assert_close(final_weights(work / "fsdp"), final_weights(work / "single"))
    # The same single-process format: the same tensor names and optimizer keys as the reference's.
    names = ("optimizer.safetensors", MODEL_FILE)
    for name in names:
        got = load_tensors(checkpoints_dir(work / "fsdp") / "step_00000002" / name)
        want = load_tensors(checkpoints_dir(work / "single") / "step_00000002" / name)
        assert {k: v.shape for k, v in got.items()} == {k: v.shape for k, v in want.items()}


@needs_fsdp
@pytest.mark.parametrize("procs", [1, 2])
def test_a_two_rank_fsdp_checkpoint_resumes_on_one_rank_and_on_two(work: Path, procs: int) -> None:
    ckpt = checkpoints_dir(work / "fsdp") / "step_00000002"
    result = _train(work, f"resumed_{procs}", procs, distributed="fsdp", resume=str(ckpt))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-8000:]
    assert f"resuming from {ckpt} at step 2" in result.stdout
    _assert_close(final_weights(work / f"resumed_{procs}"), final_weights(work / "fsdp"))


@needs_fsdp
def test_an_optimizer_without_state_resumes_under_fsdp(work: Path) -> None:
    """SGD without momentum saves no optimizer tensors; FSDP's loader needed one (an AssertionError at resume)."""
    sgd = {"optimizer": "sgd", "momentum": 0.0, "lr": 0.1}
    reference = _train(work, "sgd_single", 1, **sgd)
    assert reference.returncode == 0, reference.stderr[-4000:]
    ckpt = checkpoints_dir(work / "sgd_single") / "step_00000002"
    result = _train(work, "sgd_fsdp_resumed", 2, distributed="fsdp", resume=str(ckpt), **sgd)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-8000:]
    _assert_close(final_weights(work / "sgd_fsdp_resumed"), final_weights(work / "sgd_single"))


@pytest.mark.parametrize(("mode", "how"), [("ddp", ""), pytest.param("fsdp", ":SIGKILL", marks=needs_fsdp)])
def test_a_failing_rank_ends_the_job_in_bounded_time_and_the_run_resumes(work: Path, mode: str, how: str) -> None:
    name = f"failed_{mode}"
    env = {"MUOMNI_TEST_FAIL_RANK": f"1:3{how}", "MUOMNI_DIST_TIMEOUT_S": "20"}
    started = time.monotonic()
    result = _train(work, name, 2, env=env, distributed=mode)
    assert time.monotonic() - started < 90
    assert result.returncode != 0
    if not how:
        assert "injected failure on rank 1 at step 3" in result.stderr
    assert "step 3: checkpoint" not in result.stdout
    resumed = _train(work, name, 2, distributed=mode)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-8000:]
    assert "at step 2" in resumed.stdout
    _assert_close(final_weights(work / name), final_weights(work / mode))


def test_ddp_overlaps_steps_and_learns_what_one_process_does(work: Path) -> None:
    # The GPU's loop (the fused AdamW skips non-finite steps on the device) under torchrun: each rank launches
    # step n+1 before it reads step n, and the ranks agree on a stop through the step's own mean of the loss.
    out = (work / "ddp_fused.out").read_text()
    assert "steps overlapped" in out
    _assert_close(final_weights(work / "ddp_fused"), final_weights(work / "single_fused"))
    losses = [(m["step"], m["loss"]) for m in read_metrics(work / "ddp_fused") if "loss" in m]
    want = [(m["step"], m["loss"]) for m in read_metrics(work / "single_fused") if "loss" in m]
    assert [s for s, _ in losses] == [s for s, _ in want] == list(range(1, STEPS + 1))
    assert [v for _, v in losses] == pytest.approx([v for _, v in want], rel=1e-5)


@pytest.mark.parametrize(("fused", "step"), [(False, 2), (True, 4)], ids=["synchronous", "overlapped"])
def test_a_stop_signal_on_one_rank_stops_every_rank_after_the_same_step(work: Path, fused: bool, step: int) -> None:
    # Rank 1 alone gets SIGTERM as step 1 lands. The ranks agree through the mean they take of each step's
    # loss, which carries whether a rank had a signal when the step was launched. Synchronous: step 2 is
    # launched after the signal and says so as it lands. Overlapped: step 2 was launched before step 1
    # landed, so step 3 says so; step 4, launched beside it, lands too. A rank that stopped alone would leave
    # the other waiting in a collective, and the job would fail. Both ranks exit 143, as a run stopped rather
    # than finished, which torchrun reports as the workers' failure (so its restarts, if asked for, resume it).
    name = f"stopped_{'overlapped' if fused else 'synchronous'}"
    env = {"MUOMNI_TEST_FAIL_RANK": "1:1:SIGTERM"}
    result = _train(work, name, 2, env=env, fused=fused, distributed="ddp")
    # torchrun's report of its workers. The first to exit makes torchrun send SIGTERM to the other, which may
    # be past the last barrier and out of muomni's hands by then (-15): its work is done either way.
    failures = dict(re.findall(r"rank\s*: (\d+) \(local_rank.*\n\s*exitcode\s*: (-?\d+)", result.stderr))
    assert sorted(failures) == ["0", "1"], result.stdout[-2000:] + result.stderr[-8000:]
    assert "143" in failures.values() and set(failures.values()) <= {"143", "-15"}, failures
    assert f"stopped by SIGTERM after step {step}" in result.stdout
    assert checkpoints_dir(work / name).joinpath(f"step_{step:08d}").is_dir()


@needs_fsdp
def test_a_resume_with_another_global_batch_is_refused(work: Path) -> None:
    ckpt = checkpoints_dir(work / "fsdp") / "step_00000002"
    result = _run(
        overrides(tiny_settings(work / "corpus.txt", work / "refused", resume=str(ckpt), batch_size=2)),
        work / "cache",
        1,
    )
    assert result.returncode == 2
    assert "global batch was 4 windows (2 x 1 accumulation x 2 processes) and is 2 now" in result.stderr


def test_a_torch_whose_ranks_drift_from_one_process_is_refused_with_one_line() -> None:
    """What to do, in one line, instead of a crash in the first step or weights that drift from one process's."""
    for old in ("2.5.1+cu124", "2.6.0", "2.7.1", "2.8.0+cpu"):
        reason = cpu_unsupported("fsdp", False, old)
        assert reason is not None and "torch 2.9 or newer" in reason and old in reason and "distributed=ddp" in reason
    for old in ("2.5.1", "2.6.0+cpu"):
        reason = cpu_unsupported("ddp", True, old)
        assert reason is not None and "torch 2.7 or newer" in reason and "use_compile=false" in reason
    for new in ("2.9.1", "2.13.0+cpu", "2.14.0.dev20261101"):
        assert cpu_unsupported("fsdp", True, new) is None
    assert cpu_unsupported("ddp", True, "2.7.1") is None
    assert cpu_unsupported("ddp", False, "2.5.1") is None  # eager DDP matched on every torch tried


def test_more_ranks_on_a_node_than_gpus_is_refused_with_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """Not CUDA's "invalid device ordinal" from the rank past the last GPU: what to do, before any work."""
    from muomni import distributed
    from muomni.errors import ConfigError

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_device", lambda index: pytest.fail(f"set_device({index}) was called"))
    with pytest.raises(ConfigError, match=r"local rank 1 but this machine has 1 GPU\(s\).*--nproc_per_node 1"):
        distributed.setup("ddp", "cuda")


@pytest.mark.skipif(NO_FSDP is None, reason="this torch runs FSDP on CPUs")
def test_torchrun_with_fsdp_on_a_cpu_ends_with_the_one_line_error(tmp_path: Path) -> None:
    write_corpus(tmp_path / "corpus.txt")
    result = _train(tmp_path, "refused", 2, distributed="fsdp")
    assert result.returncode != 0
    assert f"muomni: error: config key 'distributed': {NO_FSDP}" in result.stderr
    assert "FSDP requires CUDA" not in result.stderr and "record_event" not in result.stderr  # before any step
