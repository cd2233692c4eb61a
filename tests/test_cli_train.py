"""``muomni train`` end to end, in a subprocess: the debug preset, config errors, the default job's run folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the package need not be installed
    sys.path.insert(0, str(ROOT))

from muomni.config import load_config  # noqa: E402


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache"


def train(args: list[str], cache: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "MUOMNI_TEST_KILL_AT"}
    env.update({"MUOMNI_CACHE": str(cache), "PYTHONPATH": str(ROOT)})
    cmd = [sys.executable, "-m", "muomni", "train", *args]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def metrics(save_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (save_dir / "metrics.jsonl").read_text().splitlines()]


def test_debug_preset_trains_and_the_loss_goes_down(tmp_path: Path, cache: Path) -> None:
    run = tmp_path / "debug"
    result = train(["--config", "debug", f"save_dir={run}"], cache)
    assert result.returncode == 0, result.stderr
    steps = [m for m in metrics(run) if "loss" in m]
    assert [m["step"] for m in steps] == list(range(1, len(steps) + 1))
    first, last = steps[0]["loss"], sum(m["loss"] for m in steps[-5:]) / 5
    assert last < first - 0.5, (first, last)
    vals = [m for m in metrics(run) if "val_loss" in m]
    assert vals and vals[-1]["val_loss"] < vals[0]["val_loss"]
    assert "vs unigram entropy" in result.stdout


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["lr=-1"], "config key 'lr'"),
        (["batch_sise=4"], "did you mean 'batch_size'"),
        (["--config", "no/such.json"], "does not exist"),
    ],
)
def test_config_errors_are_one_line_before_any_work(tmp_path: Path, cache: Path, args: list[str], needle: str) -> None:
    run = tmp_path / "run"
    result = train([*args, f"save_dir={run}"], cache)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and needle in result.stderr and "Traceback" not in result.stderr
    assert not run.exists() and not cache.exists()  # nothing was prepared


@pytest.mark.parametrize("inside", [False, True])
def test_a_save_dir_that_is_a_file_is_refused_before_any_work(tmp_path: Path, cache: Path, inside: bool) -> None:
    taken = tmp_path / "notes.txt"
    taken.write_text("not a run folder\n")
    save_dir = taken / "run" if inside else taken
    result = train(["--config", "debug", "max_steps=2", f"save_dir={save_dir}"], cache)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and f"{taken} is a file, not a folder" in result.stderr
    assert taken.read_text() == "not a run folder\n" and not cache.exists()  # nothing was prepared


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_a_gpu_is_a_user_error(tmp_path: Path, cache: Path) -> None:
    result = train(["--config", "debug", "device=cuda", f"save_dir={tmp_path / 'run'}"], cache)
    assert result.returncode == 2 and "no CUDA GPU" in result.stderr


def test_default_job_leaves_a_usable_run_folder(tmp_path: Path, cache: Path) -> None:
    """The built-in default job, shortened to two steps: the run folder has everything `generate` needs."""
    from muomni.data import Tokenizer
    from muomni.models.thinker import Thinker
    from muomni.training.checkpoint import MODEL_FILE, latest_checkpoint, load_tensors, verify
    from muomni.training.snapshot import load_model_state

    run = tmp_path / "default"
    result = train([f"save_dir={run}", "max_steps=2", "val_batches=1"], cache)
    assert result.returncode == 0, result.stderr
    cfg = load_config(json.loads((run / "config.json").read_text()))
    assert cfg == load_config(None, {"save_dir": str(run), "max_steps": 2, "val_batches": 1})
    tokenizer = Tokenizer.load(run / "tokenizer.json")
    assert tokenizer.vocab_size <= cfg.vocab_size
    records = metrics(run)
    assert [r["step"] for r in records if "loss" in r] == [1, 2]
    assert {"val_loss", "val_ppl"} <= set(records[-1])
    ckpt = latest_checkpoint(run)
    assert ckpt is not None and ckpt.name == "step_00000002"
    names = set(verify(ckpt)["files"])
    assert {
        "model.safetensors",
        "optimizer.safetensors",
        "trainer_state.json",
        "config.json",
        "tokenizer.json",
    } <= names
    load_model_state(Thinker(cfg), load_tensors(ckpt / MODEL_FILE), ckpt)
