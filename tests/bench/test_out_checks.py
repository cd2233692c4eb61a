"""``--out`` of ``bench``, ``profile`` and ``plan``: checked by trying it, before any work, and never
written over a file the user had; and what ``bench train`` and ``profile`` print.

Every test here that expects a refusal replaces the work (building a model, measuring a row or a plan
candidate) with a failure, as test_bench_bad_input.py does: the check must come first.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch

from muomni.bench import profile as profile_module
from muomni.cli import main
from muomni.config import load_config
from muomni.paths import writable_folder_error
from muomni.training import plan

ON_LINUX_PROC = pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux /proc")
# No file can be made in /proc, not even by root, for whom os.access says yes everywhere.
UNWRITABLE = "/proc/muomni-out-check"


def _one_error_line(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    """Run ``muomni argv``; assert a user error of one line; return that line."""
    code = main([*argv, "--config", "debug", "device=cpu"])
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("muomni: error: "), err
    return lines[0]


# --- an --out where nothing can be written ---


@ON_LINUX_PROC
@pytest.mark.parametrize(
    "command",
    [
        ["bench", "train", "--steps", "1", "--rows", "baseline"],
        ["bench", "infer", "--steps", "2"],
        ["profile", "--steps", "1"],
        ["plan", "--memory", "4"],
    ],
)
def test_an_unwritable_out_is_refused_before_any_work(
    command: list[str], no_work: None, capsys: pytest.CaptureFixture[str]
) -> None:
    # It was a FileNotFoundError traceback (exit 1), after the measurement for all but profile.
    line = _one_error_line(capsys, [*command, "--out", UNWRITABLE])
    assert line == (
        f"muomni: error: --out {UNWRITABLE} cannot be written (No such file or directory); give a path you can write to"
    )


@ON_LINUX_PROC
def test_the_write_check_tries_and_leaves_nothing_behind(tmp_path: Path) -> None:
    assert writable_folder_error(Path(UNWRITABLE)) == "No such file or directory"
    assert writable_folder_error(tmp_path / "new" / "deeper") is None
    assert list(tmp_path.iterdir()) == [], "the check left a folder or its probe file behind"
    (tmp_path / "there").mkdir()
    assert writable_folder_error(tmp_path / "there") is None
    assert [p.name for p in tmp_path.iterdir()] == ["there"] and not any((tmp_path / "there").iterdir())


def test_bench_checks_the_config_before_leaving_its_folder(
    tmp_path: Path, no_work: None, capsys: pytest.CaptureFixture[str]
) -> None:
    # The --out check runs before bench train loads its config: the folder it tries is removed again.
    out = tmp_path / "bench" / "train"
    line = _one_error_line(capsys, ["bench", "train", "--out", str(out), "nosuchkey=1"])
    assert "nosuchkey" in line
    assert not (tmp_path / "bench").exists()


# --- bench train --ckpt ---


def test_bench_train_refuses_ckpt(tmp_path: Path, no_work: None, capsys: pytest.CaptureFixture[str]) -> None:
    # It was ignored without a word: the table measured a fresh model of --config.
    line = _one_error_line(capsys, ["bench", "train", "--ckpt", str(tmp_path / "run"), "--out", str(tmp_path / "b")])
    assert line == "muomni: error: --ckpt is for bench infer; bench train measures a fresh model of --config"


# --- plan --out over an existing file ---


@pytest.mark.parametrize(
    "mine",
    [
        pytest.param("the user's corpus\n\nsecond paragraph\n", id="text"),
        pytest.param('{"batch_size": 4}\n', id="hand-written config"),  # e.g. the one being planned
        pytest.param('{"batch_size": 4, "not_a_key": 1}\n', id="not a config"),
        pytest.param("[" * 100_000 + "]" * 100_000, id="nested past the JSON parser's depth"),
    ],
)
def test_plan_refuses_an_existing_file_it_did_not_write(
    mine: str, tmp_path: Path, no_work: None, capsys: pytest.CaptureFixture[str]
) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text(mine, encoding="utf-8")
    line = _one_error_line(capsys, ["plan", "--memory", "4", "--out", str(victim)])
    assert line == (
        f"muomni: error: --out {victim} exists and is not a plan muomni wrote; give a new file name or remove it"
    )
    assert victim.read_text(encoding="utf-8") == mine


def _fake_search(cfg: Any, budget_gib: float, workdir: Path) -> list[dict[str, Any]]:
    """One candidate that fits, measured instantly."""
    keys = plan.candidate(cfg, cfg.batch_size, chunked_ce=True, **plan.SAVERS[0])
    return [{"keys": keys, "fits": True, "tokens_per_s": 1000.0, "peak_memory_bytes": 1 << 20}]


def test_plan_writes_over_a_plan_it_wrote(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(plan, "_warm_data_cache", lambda cfg: None)
    monkeypatch.setattr(plan, "search", _fake_search)
    out = tmp_path / "planned.json"
    argv = ["plan", "--memory", "4", "--out", str(out), "--config", "debug", "device=cpu"]
    assert main(argv) == 0
    assert main([*argv, "batch_size=4"]) == 0, capsys.readouterr().err  # a new plan replaces the old one
    planned = json.loads(out.read_text(encoding="utf-8"))
    assert planned["batch_size"] == 4
    assert load_config(planned).batch_size == 4  # a plan still loads as --config


# --- profile's memory timeline ---


def _memory_profile() -> torch.profiler.profile:
    with torch.profiler.profile(record_shapes=True, profile_memory=True, with_stack=True) as prof:
        torch.ones(64, 64).matmul(torch.ones(64, 64)).sum()
    return prof


def test_the_memory_timeline_shows_no_deprecation_warning(tmp_path: Path) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        profile_module._memory_timeline(_memory_profile(), tmp_path, torch.device("cpu"))
    assert not [w for w in caught if "export_memory_timeline" in str(w.message)]


def test_only_the_timeline_deprecation_is_silenced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    prof = _memory_profile()

    def export(path: str, device: str | None = None) -> None:
        warnings.warn("`export_memory_timeline` is deprecated and will be removed", FutureWarning, stacklevel=2)
        warnings.warn("something else the user should see", UserWarning, stacklevel=2)

    monkeypatch.setattr(prof, "export_memory_timeline", export)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        profile_module._memory_timeline(prof, tmp_path, torch.device("cpu"))
    assert [str(w.message) for w in caught] == ["something else the user should see"]


# --- keys bench train and profile set themselves ---


def _warnings_before_work(capsys: pytest.CaptureFixture[str], argv: list[str]) -> list[str]:
    """Run ``muomni argv`` up to its first work (which ``no_work`` fails); return its stderr lines."""
    with pytest.raises(AssertionError, match="work started"):
        main(argv)
    return capsys.readouterr().err.splitlines()


def test_profile_warns_of_each_key_it_sets_itself(
    tmp_path: Path, no_work: None, capsys: pytest.CaptureFixture[str]
) -> None:
    # They went without a word: the profile ran 4 steps into --out/run, whatever max_steps, save_dir and
    # resume said.
    out = tmp_path / "prof"
    argv = ["profile", "--config", "debug", "--steps", "1", "--out", str(out), "device=cpu"]
    assert _warnings_before_work(capsys, argv) == []  # the preset's max_steps, save_dir, ... are not the user's
    keys = ["save_dir=/x", "max_steps=1000", "resume=runs/a", "warmup_steps=0", "lr=0.01"]
    assert _warnings_before_work(capsys, [*argv, *keys]) == [
        "muomni: warning: config key 'max_steps' is set by --steps here: 2 warm-up steps, then 1 traced and 1 for "
        "memory",
        "muomni: warning: config key 'resume' is not used here: a profile always starts a new run",
        f"muomni: warning: config key 'save_dir' is not used here: the profiled steps' run folder is {out / 'run'}",
    ]  # warmup_steps=0 is kept as given; lr is used
    assert _warnings_before_work(capsys, [*argv, "warmup_steps=3"]) == [
        "muomni: warning: config key 'warmup_steps' is set to 1 here: a longer warmup would outlast the profile's "
        "few steps"
    ]


def test_bench_train_warns_of_each_key_it_or_its_rows_set(
    tmp_path: Path, no_work: None, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["bench", "train", "--config", "debug", "--steps", "2", "--out", str(tmp_path / "b"), "device=cpu"]
    rows = ["--rows", "baseline,+offload_activations"]
    assert _warnings_before_work(capsys, [*argv, *rows]) == []
    keys = ["max_steps=1000", "save_dir=/y", "use_amp=true", "cpu_offload=optimizer", "batch_size=4"]
    assert _warnings_before_work(capsys, [*argv, *rows, *keys]) == [
        "muomni: warning: config key 'cpu_offload' is set here by +offload_activations; the other rows run with yours",
        "muomni: warning: config key 'max_steps' is set by --steps here: a row runs 3 steps, 1 to warm up and 2 timed",
        "muomni: warning: config key 'save_dir' is not used here: each row runs in a temporary folder, and the "
        "results go to --out",
        "muomni: warning: config key 'use_amp' is set here by every row (baseline, +offload_activations); your value "
        "is not used",
    ]


def test_bench_train_vs_hf_warns_of_keys_hugging_faces_rows_set(
    tmp_path: Path, no_work: None, capsys: pytest.CaptureFixture[str]
) -> None:
    # weight_dtype=bf16 gave muomni's rows bf16 weight copies and Hugging Face's rows fp32 ones, unsaid.
    pytest.importorskip("transformers")
    argv = ["bench", "train", "--config", "debug", "--steps", "2", "--out", str(tmp_path / "b"), "device=cpu"]
    keys = ["--rows", "baseline", "weight_dtype=bf16", "lr=0.01"]
    assert _warnings_before_work(capsys, [*argv, *keys]) == []  # without --vs-hf, every row runs with it
    assert _warnings_before_work(capsys, [*argv, "--vs-hf", *keys]) == [
        "muomni: warning: config key 'weight_dtype' is used by muomni's rows; Hugging Face's rows set it themselves "
        "(their precision and compile are the row's)"
    ]


def test_a_profile_stopped_before_its_trace_leaves_no_folder_it_made(
    tmp_path: Path, no_work: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """Stopped while the model was built (here a failure; Ctrl-C alike), profile left --out holding its
    profile.json alone. A folder it made is removed again; one that was there before is kept."""
    out = tmp_path / "made" / "prof"
    argv = ["profile", "--config", "debug", "--steps", "1", "--out", str(out), "device=cpu"]
    _warnings_before_work(capsys, argv)
    assert not out.exists() and (tmp_path / "made").is_dir()  # the parent it made stays: it may hold others
    kept = tmp_path / "kept"
    kept.mkdir()
    _warnings_before_work(capsys, [*argv[:-2], str(kept), "device=cpu"])
    assert kept.is_dir() and profile_module.wrote_profile(kept)
