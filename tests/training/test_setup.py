"""Decisions taken at setup: precision, refused features, resume=never, init_from, the loss function."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from training_helpers import final_weights, tiny_config

from muomni.config import Config
from muomni.errors import CheckpointError, ConfigError, UserError
from muomni.training import precision
from muomni.training.checkpoint import MODEL_FILE, STATE_FILE, checkpoints_dir, latest_checkpoint, load_tensors
from muomni.training.loss import lm_loss
from muomni.training.precision import amp_dtype
from muomni.training.sources import initial_sources
from muomni.training.startup import describe_run
from muomni.training.trainer import Trainer

CPU = torch.device("cpu")


@pytest.mark.parametrize("native_bf16", [False, True])
def test_cpu_precision_is_bf16_where_the_cpu_has_bf16_else_fp32(
    corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, native_bf16: bool
) -> None:
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: native_bf16)
    cfg = tiny_config(corpus, tmp_path, use_amp=True)  # amp_dtype auto
    assert amp_dtype(cfg, CPU) is (torch.bfloat16 if native_bf16 else None)
    assert amp_dtype(cfg.replace(amp_dtype="bf16"), CPU) is torch.bfloat16
    assert amp_dtype(cfg.replace(use_amp=False), CPU) is None
    assert amp_dtype(cfg.replace(amp_dtype="bf16", use_amp=False), CPU) is None
    with pytest.warns(UserWarning, match="fp16 is for CUDA"):
        assert amp_dtype(cfg.replace(amp_dtype="fp16"), CPU) is None


def test_cpu_bf16_check_reads_the_cpus_instruction_sets(monkeypatch: pytest.MonkeyPatch) -> None:
    for bf16, amx, want in ((False, False, False), (True, False, True), (False, True, True)):
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda v=bf16: v, raising=False)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda v=amx: v, raising=False)
        assert precision.cpu_has_native_bf16() is want


def test_bf16_autocast_trains_on_cpu(corpus: Path, tmp_path: Path) -> None:
    t = Trainer(tiny_config(corpus, tmp_path / "run", use_amp=True, amp_dtype="bf16"))
    assert t.precision.dtype is torch.bfloat16 and not t.precision.scaler.is_enabled()
    losses = [t.train_step(t.next_batches())[0] for _ in range(3)]
    assert all(torch.isfinite(torch.tensor(losses)))
    assert t.model.lm_head.weight.dtype is torch.float32  # weights stay fp32


def test_bf16_residual_stream_trains_like_the_fp32_one(corpus: Path, tmp_path: Path) -> None:
    losses = {}
    for residual in ("fp32", "bf16"):
        t = Trainer(
            tiny_config(
                corpus, tmp_path / residual, use_amp=True, amp_dtype="bf16", dropout=0.0, residual_dtype=residual
            )
        )
        assert any("bf16 residual stream" in line for line in describe_run(t)) is (residual == "bf16")
        losses[residual] = [t.train_step(t.next_batches()).loss for _ in range(3)]
    assert losses["bf16"] != losses["fp32"]  # the stream did change
    assert losses["bf16"] == pytest.approx(losses["fp32"], rel=1e-2)


@pytest.mark.parametrize(
    ("keys", "named"),
    [
        ({"distributed": "fsdp", "cpu_offload": "optimizer"}, "cpu_offload"),
        ({"distributed": "fsdp", "use_amp": True, "amp_dtype": "fp16", "device": "cuda"}, "device|amp_dtype"),
        ({"residual_dtype": "bf16"}, "residual_dtype"),  # the tests run fp32
    ],
)
@pytest.mark.filterwarnings("ignore:distributed=.* but not started by torchrun")  # refused all the same
def test_unavailable_features_are_refused(corpus: Path, tmp_path: Path, keys: dict, named: str) -> None:
    cfg = tiny_config(corpus, tmp_path, **keys)
    with pytest.raises(ConfigError, match=f"'({named})'"):
        Trainer(cfg)


def test_resume_never_starts_over_and_drops_the_old_checkpoints(corpus: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    Trainer(tiny_config(corpus, run)).fit()
    assert [p.name for p in checkpoints_dir(run).iterdir()] == [f"step_0000000{k}" for k in (4, 8)] + ["step_00000012"]
    with pytest.warns(UserWarning, match="resume=never: this run replaces the one in .* up to step 12"):
        fresh = Trainer(tiny_config(corpus, run, resume="never", max_steps=4, lr=1e-3))
    assert fresh.progress.step == 0
    fresh.fit()
    assert sorted(p.name for p in checkpoints_dir(run).iterdir()) == ["step_00000004"]
    state = json.loads((latest_checkpoint(run) / STATE_FILE).read_text())
    assert state["schedule"]["lr"] == 1e-3  # the new run's checkpoint, not the old one's


def test_init_from_a_muomni_checkpoint_loads_its_weights(corpus: Path, tmp_path: Path) -> None:
    Trainer(tiny_config(corpus, tmp_path / "source", max_steps=4)).fit()
    source = final_weights(tmp_path / "source")
    # d_model differs from the source: the model keys are taken from the checkpoint, ctx_len stays the user's.
    cfg = tiny_config(corpus, tmp_path / "tuned", init_from=str(tmp_path / "source"), d_model=64, ctx_len=16)
    t = Trainer(cfg)
    assert t.cfg.d_model == 32 and t.cfg.ctx_len == 16 and t.progress.step == 0
    for name, tensor in t.model.state_dict().items():
        assert torch.equal(tensor, source[name]), name
    ckpt = latest_checkpoint(tmp_path / "source")
    assert set(load_tensors(ckpt / MODEL_FILE)) == set(source)


def _short_run(corpus: Path, save_dir: Path, **changes: object) -> Config:
    """A run of a few steps (a warmup of 1: the helper's 3 would outlast it and warn)."""
    return tiny_config(corpus, save_dir, warmup_steps=1, **changes)


def test_a_resume_with_another_init_from_is_refused(corpus: Path, tmp_path: Path) -> None:
    # The resumed run's weights are its checkpoint's: another init_from was once dropped without a word.
    Trainer(_short_run(corpus, tmp_path / "a", max_steps=2)).fit()
    Trainer(_short_run(corpus, tmp_path / "b", max_steps=2, d_model=64)).fit()
    Trainer(_short_run(corpus, tmp_path / "tuned", max_steps=2, init_from=str(tmp_path / "a"))).fit()
    with pytest.raises(
        CheckpointError, match=r"began from init_from=.*a, and init_from=.*b is given now; give init_from"
    ):
        Trainer(_short_run(corpus, tmp_path / "tuned", max_steps=4, init_from=str(tmp_path / "b")))
    with pytest.raises(CheckpointError, match="began from scratch, and init_from=.* is given now; leave init_from out"):
        Trainer(_short_run(corpus, tmp_path / "a", max_steps=4, init_from=str(tmp_path / "b")))
    # The same source written another way resumes.
    same = Path(os.path.relpath(tmp_path / "a"))
    assert Trainer(_short_run(corpus, tmp_path / "tuned", max_steps=4, init_from=str(same))).progress.step == 2


@pytest.mark.parametrize("max_steps", [4, 2])
def test_a_resumed_run_at_or_past_its_end_says_there_is_nothing_to_train(
    corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], max_steps: int
) -> None:
    # It once said "done at step 4: val loss n/a (no validation data)", though the run has validation data.
    Trainer(_short_run(corpus, tmp_path / "run", max_steps=4)).fit()
    capsys.readouterr()
    ckpt = latest_checkpoint(tmp_path / "run")
    trained_with = (tmp_path / "run" / "config.json").read_text()
    assert Trainer(_short_run(corpus, tmp_path / "run", max_steps=max_steps)).fit() == ckpt
    out = capsys.readouterr().out
    where = "at" if max_steps == 4 else "past"
    assert (
        f"nothing to train: the run is already at step 4, {where} its end (max_steps {max_steps}, max_epochs null)"
        in out
    )
    assert "no validation data" not in out and "done at step" not in out
    assert latest_checkpoint(tmp_path / "run") == ckpt  # nothing rewritten
    assert (tmp_path / "run" / "config.json").read_text() == trained_with  # not max_steps 2, never trained with


def test_a_resume_into_a_new_folder_with_nothing_to_train_leaves_no_folder_behind(corpus: Path, tmp_path: Path) -> None:
    # It left the new folder with its lock and an empty metrics.jsonl, which refused every later run there as
    # "files that no muomni run wrote".
    Trainer(_short_run(corpus, tmp_path / "run", max_steps=4)).fit()
    new, empty = tmp_path / "new", tmp_path / "empty"
    empty.mkdir()
    for folder in (new, empty):
        Trainer(_short_run(corpus, folder, max_steps=4, resume=str(tmp_path / "run"))).fit()
    assert not new.exists()
    assert [p.name for p in empty.iterdir()] == [".lock"]  # a folder of the user's stays, with nothing of a run's
    for folder in (new, empty):
        Trainer(_short_run(corpus, folder, max_steps=2)).fit()
        assert latest_checkpoint(folder) is not None


def test_a_vocab_size_far_beyond_what_the_corpus_teaches_warns(corpus: Path, tmp_path: Path) -> None:
    with pytest.warns(
        UserWarning, match=r"the tokenizer learned \d+ tokens from this corpus, far fewer than vocab_size 20,000"
    ):
        cfg, tokenizer, _ = initial_sources(tiny_config(corpus, tmp_path / "run", vocab_size=20_000))
    assert tokenizer.vocab_size < 10_000 and cfg.vocab_size == 20_000


def test_lm_loss_is_the_summed_next_token_cross_entropy() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Embedding(50, 8), torch.nn.Linear(8, 50))
    tokens = torch.randint(0, 50, (3, 9))
    total, n = lm_loss(model, tokens)
    logits = model(tokens[:, :-1])
    expected = F.cross_entropy(logits.reshape(-1, 50), tokens[:, 1:].reshape(-1))
    assert n == 24
    torch.testing.assert_close(total / n, expected)


def test_max_epochs_ends_the_run_when_the_sampler_wraps(corpus: Path, tmp_path: Path) -> None:
    t = Trainer(tiny_config(corpus, tmp_path / "run", max_steps=None, max_epochs=1, batch_size=16))
    expected = -(-t.data.n_train_windows // 16)  # ceil: the last step crosses into epoch 1
    assert t.total_steps == expected
    t.fit()
    assert t.progress.step == expected and t.stream.epoch == 1


def test_a_second_fit_on_the_same_trainer_is_refused_and_a_new_trainer_resumes(corpus: Path, tmp_path: Path) -> None:
    # A second fit() once ran a new run's bookkeeping over this one's state: after a stop it trained nothing
    # and said "done"; after the end it rewrote the last checkpoint.
    t = Trainer(_short_run(corpus, tmp_path / "run", max_steps=2))
    ckpt = t.fit()
    with pytest.raises(UserError, match=r"has run fit\(\) already; make a new Trainer\(cfg\), which resumes the run"):
        t.fit()
    assert latest_checkpoint(tmp_path / "run") == ckpt
    assert Trainer(_short_run(corpus, tmp_path / "run", max_steps=4)).progress.step == 2


def test_init_from_a_checkpoint_shared_without_its_training_state(corpus: Path, tmp_path: Path) -> None:
    # init_from checked every file of the manifest: "optimizer.safetensors is missing", for files it never reads.
    Trainer(_short_run(corpus, tmp_path / "a", max_steps=2)).fit()
    ckpt = latest_checkpoint(tmp_path / "a")
    full = Trainer(_short_run(corpus, tmp_path / "full", init_from=str(ckpt))).model.state_dict()
    for name in ("optimizer.safetensors", "rng.safetensors", STATE_FILE):
        (ckpt / name).unlink()
    stripped = Trainer(_short_run(corpus, tmp_path / "stripped", init_from=str(ckpt))).model.state_dict()
    assert full.keys() == stripped.keys() and all(torch.equal(full[k], stripped[k]) for k in full)
