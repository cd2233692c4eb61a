"""A run whose stdout reader goes away trains on; a stop signal is acknowledged at once and does not wait
for a whole validation."""

from __future__ import annotations

import io
import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from training_helpers import ROOT, overrides, run_cli, tiny_config, tiny_settings

from muomni.cli import EXIT_TERMINATED
from muomni.console import DroppingStdout
from muomni.training.checkpoint import list_checkpoints
from muomni.training.runlog import METRICS_FILE, RunLog, perplexity, perplexity_text
from muomni.training.trainer import Trainer


def test_a_closed_pipe_is_dropped_and_writing_goes_on() -> None:
    read, write = os.pipe()
    stream = io.TextIOWrapper(os.fdopen(write, "wb"), encoding="utf-8", line_buffering=True)
    out = DroppingStdout(stream)
    out.write("seen\n")
    assert os.read(read, 100) == b"seen\n"
    os.close(read)  # the reader goes away (`| head -1`)
    out.write("lost\n")  # a BrokenPipeError before
    out.flush()
    assert out.dropped
    assert out.write("after\n") == len("after\n")
    stream.close()  # what was buffered goes to the null device now: no error at close either


def test_training_goes_on_when_stdout_is_closed(corpus: Path, tmp_path: Path, private_cache: Path) -> None:
    # `muomni train | head -1`: the run died of BrokenPipeError mid-run, with no checkpoint.
    save_dir = tmp_path / "run"
    settings = tiny_settings(corpus, save_dir, max_steps=24, checkpoint_freq=12, val_freq=12)
    env = {**os.environ, "MUOMNI_CACHE": str(private_cache), "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "muomni", "train", *overrides(settings)]
    with subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        assert proc.stdout.readline().startswith(b"muomni: ")
        proc.stdout.close()
        err = proc.stderr.read().decode()
        code = proc.wait(timeout=120)
    assert code == 0, err
    assert "Traceback" not in err and "BrokenPipe" not in err
    assert [p.name for p in list_checkpoints(save_dir)] == ["step_00000012", "step_00000024"]


@pytest.mark.parametrize(
    ("resume", "again"), [("auto", "the same command"), ("never", "the same command with resume=auto")]
)
def test_a_stop_is_acknowledged_at_once(
    corpus: Path, tmp_path: Path, private_cache: Path, resume: str, again: str
) -> None:
    # The last line says how to go on: with resume=never the same command would start over instead.
    settings = tiny_settings(corpus, tmp_path / "run", max_steps=12, resume=resume)
    result = run_cli(["train", *overrides(settings)], private_cache, env={"MUOMNI_TEST_KILL_AT": "step_end:2:SIGTERM"})
    assert result.returncode == EXIT_TERMINATED, result.stderr
    said = [line for line in result.stderr.splitlines() if "stopping after this step" in line]
    assert said == ["muomni: SIGTERM: stopping after this step, with a checkpoint (Ctrl-C again: at once)"]
    last = result.stdout.splitlines()[-1]
    assert last.startswith("muomni: stopped by SIGTERM after step 2; saved ")
    assert last.endswith(f"step_00000002 ({again} resumes the run)")


def test_a_stop_cuts_validation_short(corpus: Path, tmp_path: Path) -> None:
    trainer = Trainer(tiny_config(corpus, tmp_path / "run", val_batches=4, batch_size=2))
    full = trainer.evaluate()
    assert full is not None and len(trainer.val_set) > trainer.cfg.batch_size  # more than one chunk
    asked = []

    def stopped() -> bool:  # turns true after the first chunk
        asked.append(True)
        return len(asked) > 1

    assert trainer.evaluate(stopped) is None
    assert len(asked) == 2, "validation went on after the stop"
    assert trainer.model.training
    assert trainer.evaluate(lambda: False) == full


def _val_records(save_dir: Path) -> list[tuple[int, float]]:
    from training_helpers import read_metrics

    return [(r["step"], r["val_loss"]) for r in read_metrics(save_dir) if "val_loss" in r]


def test_a_stop_at_the_last_step_leaves_its_validation_to_the_resume(
    corpus: Path, tmp_path: Path, private_cache: Path
) -> None:
    """A stop skips the validation due after its step; the resumed run does it first, so the run's log ends as
    one that never stopped (it said "nothing to train" and the last validation was never made)."""
    keys = {"max_steps": 4, "val_freq": 4, "checkpoint_freq": 4, "dropout": 0.0}
    whole = tmp_path / "whole"
    assert run_cli(["train", *overrides(tiny_settings(corpus, whole, **keys))], private_cache).returncode == 0
    run = tmp_path / "run"
    args = ["train", *overrides(tiny_settings(corpus, run, **keys))]
    stopped = run_cli(args, private_cache, env={"MUOMNI_TEST_KILL_AT": "step_end:4:SIGTERM"})
    assert "stopped by SIGTERM after step 4" in stopped.stdout and _val_records(run) == []
    assert stopped.returncode == EXIT_TERMINATED, stopped.stderr
    resumed = run_cli(args, private_cache)
    assert resumed.returncode == 0, resumed.stderr
    assert "nothing to train" not in resumed.stdout and "done at step 4: val loss" in resumed.stdout
    assert _val_records(run) == _val_records(whole) and len(_val_records(run)) == 1
    again = run_cli(args, private_cache)  # now it is the same command run again
    assert "nothing to train" in again.stdout and len(_val_records(run)) == 1


def test_a_signal_during_the_last_validation_stops_the_run(
    corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C during the validation after the last step: the run says it was stopped and exits as interrupted,
    rather than "done ... val loss n/a (no validation data)" and exit 0; the resume makes that validation."""
    cfg = tiny_config(corpus, tmp_path / "run", max_steps=6, val_freq=4, checkpoint_freq=6, dropout=0.0)
    real = Trainer.evaluate

    def evaluate(self: Trainer, stopped=None):  # noqa: ANN001, ANN202
        if self.progress.step == 6:
            os.kill(os.getpid(), signal.SIGINT)  # to the run's own handler, as Ctrl-C would
        return real(self, stopped) if stopped is not None else real(self)

    monkeypatch.setattr(Trainer, "evaluate", evaluate)
    trainer = Trainer(cfg)
    trainer.fit()
    assert trainer.stop_signal == signal.SIGINT
    assert [step for step, _ in _val_records(Path(cfg.save_dir))] == [4]
    monkeypatch.setattr(Trainer, "evaluate", real)
    Trainer(cfg).fit()
    assert [step for step, _ in _val_records(Path(cfg.save_dir))] == [4, 6]


def test_a_diverged_runs_perplexity_is_shown_in_scientific_notation(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """lr=10 printed "perplexity 1359948808389726412117569525776384.00"; past a float's range exp() overflows."""
    assert perplexity_text(2.0) == f"{math.exp(2.0):.2f}" and perplexity_text(13.8) == f"{math.exp(13.8):.2f}"
    for loss in [math.log(1e6), 13.9, 76.2928, *(7.0 * k + 0.123 for k in range(2, 102))]:
        assert perplexity_text(loss) == format(math.exp(loss), ".2e"), loss  # Python's own notation, up to 1e308
    assert perplexity_text(76.2928) == "1.36e+33"
    assert perplexity_text(1000.0) == "1.97e+434"  # exp(1000) = 10**434.294...: no float holds it, no overflow
    assert (perplexity_text(math.inf), perplexity_text(math.nan)) == ("inf", "nan")
    assert perplexity(709.0) == math.exp(709.0) and perplexity(710.0) == math.inf and math.isnan(perplexity(math.nan))

    log = RunLog(tmp_path, 0, 10, print_freq=1)
    log.evaluation(5, 76.2928)
    log.evaluation(10, 1000.0)
    log.close()
    assert capsys.readouterr().out.splitlines() == [
        "muomni: step 5: val loss 76.2928, perplexity 1.36e+33",
        "muomni: step 10: val loss 1000.0000, perplexity 1.97e+434",
    ]
    records = [json.loads(line) for line in (tmp_path / METRICS_FILE).read_text().splitlines()]
    assert records == [
        {"step": 5, "val_loss": 76.2928, "val_ppl": math.exp(76.2928)},
        {"step": 10, "val_loss": 1000.0, "val_ppl": None},  # strict JSON: an overflow is null, as inf is
    ]
