"""Memory savers in the trainer change how a step is computed, never what is learned."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from training_helpers import tiny_config

from muomni.training.autofit import OutOfMemory
from muomni.training.trainer import Trainer


def _train(cfg, steps: int = 3, fail_above: int | None = None) -> tuple[Trainer, list[float]]:  # noqa: ANN001
    trainer = Trainer(cfg)
    if fail_above is not None:  # a micro-batch larger than this "runs out of memory", as a GPU would
        real_loss = trainer.loss_fn

        def loss_fn(model, tokens):  # noqa: ANN001, ANN202
            if tokens.shape[0] > fail_above:
                raise torch.OutOfMemoryError("CUDA out of memory (injected)")
            return real_loss(model, tokens)

        trainer.loss_fn = loss_fn
    log = type("Log", (), {"info": lambda self, line: None})()
    losses = [trainer.fitted_step(trainer.next_batches(), log).result().loss for _ in range(steps)]
    return trainer, losses


def test_checkpointed_run_evaluates_without_recomputing_or_warning(corpus: Path, tmp_path: Path) -> None:
    # Evaluation runs without grad: checkpointing there has nothing to save, and the reentrant kind warns
    # that no input requires grad. The checkpointed blocks must step aside, and give the plain loss.
    plain = Trainer(tiny_config(corpus, tmp_path / "a", dropout=0.0))
    ckpt = Trainer(tiny_config(corpus, tmp_path / "b", dropout=0.0, use_gradient_checkpointing=True))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ckpt.evaluate() == plain.evaluate()


def _weights(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


def test_auto_fit_recovers_with_the_weights_of_the_smaller_micro_batch(corpus: Path, tmp_path: Path) -> None:
    recovered, losses = _train(tiny_config(corpus, tmp_path / "a", batch_size=8, auto_fit=True), fail_above=2)
    assert (recovered.cfg.batch_size, recovered.cfg.gradient_accumulation_steps) == (2, 4)
    reference, ref_losses = _train(tiny_config(corpus, tmp_path / "b", batch_size=2, gradient_accumulation_steps=4))
    assert losses == ref_losses
    for (name, a), b in zip(_weights(recovered).items(), _weights(reference).values()):
        assert torch.equal(a, b), name


def test_auto_fit_then_checkpointing_then_gives_up(corpus: Path, tmp_path: Path) -> None:
    trainer, _ = _train(tiny_config(corpus, tmp_path / "a", batch_size=2, auto_fit=True), steps=1, fail_above=1)
    assert trainer.cfg.batch_size == 1 and trainer.cfg.gradient_accumulation_steps == 2
    from muomni.training.autofit import OutOfMemory

    with pytest.raises(OutOfMemory, match="lower ctx_len"):
        _train(tiny_config(corpus, tmp_path / "b", batch_size=1, auto_fit=True), steps=1, fail_above=0)


def test_auto_fit_checkpoints_every_block_before_it_offloads(corpus: Path, tmp_path: Path) -> None:
    # A run that checkpoints every 2nd block has more to save at micro-batch 1: every block, then offload.
    cfg = tiny_config(corpus, tmp_path / "a", batch_size=1, auto_fit=True, use_gradient_checkpointing=True)
    cfg = cfg.replace(gradient_checkpointing_every=2)
    trainer = Trainer(cfg)
    real_loss, failures = trainer.loss_fn, []

    def loss_fn(model, tokens):  # noqa: ANN001, ANN202
        if not failures:  # the first micro-batch "runs out of memory", the retry fits
            failures.append(1)
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        return real_loss(model, tokens)

    trainer.loss_fn = loss_fn
    log = type("Log", (), {"info": lambda self, line: None})()
    trainer.fitted_step(trainer.next_batches(), log).result()
    assert (trainer.cfg.gradient_checkpointing_every, trainer.cfg.cpu_offload) == (1, "none")
    assert all("forward" in vars(block) for block in trainer.model.model.layers)  # each one checkpointed now
    from muomni.training.autofit import next_remedy

    assert next_remedy(trainer.cfg) == {"cpu_offload": "activations"}


def test_a_resumed_run_keeps_the_split_and_savers_auto_fit_chose(corpus: Path, tmp_path: Path) -> None:
    from muomni.training.snapshot import split_of
    from muomni.training.sources import adopt_fitted_split

    asked = tiny_config(corpus, tmp_path, batch_size=8, use_gradient_checkpointing=True)
    asked = asked.replace(gradient_checkpointing_every=2)
    fitted = {"batch_size": 1, "gradient_accumulation_steps": 8, "gradient_checkpointing_every": 1}
    fitted |= {"cpu_offload": "activations"}
    old = asked.replace(**fitted)
    kept = adopt_fitted_split(old, asked, split_of(asked))  # asked again for what the run was asked for
    assert {key: getattr(kept, key) for key in fitted} == fitted
    other_batch = asked.replace(batch_size=4)  # another effective batch: the run asks for something new
    assert adopt_fitted_split(old, other_batch, split_of(asked)) == other_batch
    # The same effective batch split anew (smaller micro-batches for a smaller device) is the user's to choose.
    anew = asked.replace(batch_size=2, gradient_accumulation_steps=4, cpu_offload="activations")
    assert adopt_fitted_split(old, anew, split_of(asked)) == anew
    # A checkpoint from before the asked split was saved: a micro-batch other than the checkpoint's is adopted.
    assert {key: getattr(adopt_fitted_split(old, asked, None), key) for key in fitted} == fitted


def test_a_resume_takes_a_new_split_of_the_same_batch(corpus: Path, tmp_path: Path) -> None:
    """Resuming with smaller micro-batches and memory savers (say, on a smaller device) trains with them, and the
    run's config says so; the checkpoint records what each run was asked for."""
    import json

    from training_helpers import read_metrics

    run = tmp_path / "run"
    Trainer(tiny_config(corpus, run, dropout=0.0, max_steps=2, checkpoint_freq=2, warmup_steps=1)).fit()
    state = json.loads((run / "checkpoints" / "step_00000002" / "trainer_state.json").read_text())
    assert state["asked_split"]["batch_size"] == 4 and state["asked_split"]["gradient_accumulation_steps"] == 1
    split = {"batch_size": 2, "gradient_accumulation_steps": 2, "use_gradient_checkpointing": True}
    resumed = Trainer(tiny_config(corpus, run, dropout=0.0, max_steps=4, checkpoint_freq=2, warmup_steps=1, **split))
    assert {key: getattr(resumed.cfg, key) for key in split} == split
    resumed.fit()
    saved = json.loads((run / "config.json").read_text())
    assert {key: saved[key] for key in split} == split
    assert [r["step"] for r in read_metrics(run) if "loss" in r] == [1, 2, 3, 4]


def test_without_auto_fit_the_error_propagates(corpus: Path, tmp_path: Path) -> None:
    with pytest.raises(torch.OutOfMemoryError):
        _train(tiny_config(corpus, tmp_path / "a", batch_size=4, auto_fit=False), steps=1, fail_above=2)


CHECKPOINTING = {"use_gradient_checkpointing": True}
BF16_WEIGHTS = {"use_amp": True, "amp_dtype": "bf16", "weight_dtype": "bf16"}
MOE = {"use_moe": True, "num_experts": 4, "num_experts_per_tok": 2}


@pytest.mark.parametrize(
    ("setting", "base_setting"),
    [
        ({"cpu_offload": "activations"}, {}),
        ({"cpu_offload": "optimizer"}, {}),
        ({"chunked_ce": False}, {}),
        (CHECKPOINTING, {}),
        ({**CHECKPOINTING, "gradient_checkpointing_every": 2}, {}),
        ({**CHECKPOINTING, "cpu_offload": "activations"}, {}),
        # The bf16 copies are leaves of their own, whose gradients the recomputation must reach too.
        ({**CHECKPOINTING, **BF16_WEIGHTS}, BF16_WEIGHTS),
        # Dropout draws its masks again in the recomputation: they must be the forward's.
        ({**CHECKPOINTING, "dropout": 0.1}, {"dropout": 0.1}),
        # Experts no token chose get no gradient, in the recomputation as in the forward.
        ({**CHECKPOINTING, **MOE}, MOE),
    ],
    ids=[
        "offload_activations",
        "offload_optimizer",
        "full_logits",
        "checkpointing",
        "checkpointing_every_2nd_block",
        "checkpointing_offload_activations",
        "checkpointing_bf16_weights",
        "checkpointing_dropout",
        "checkpointing_moe",
    ],
)
def test_memory_savers_give_the_same_weights(corpus: Path, tmp_path: Path, setting: dict, base_setting: dict) -> None:
    base, base_losses = _train(tiny_config(corpus, tmp_path / "a", **{"dropout": 0.0, **base_setting}))
    other, other_losses = _train(tiny_config(corpus, tmp_path / "b", **{"dropout": 0.0, **setting}))
    assert other_losses == pytest.approx(base_losses, rel=1e-5)
    for (name, a), b in zip(_weights(base).items(), _weights(other).values()):
        # Relative error of each tensor as a whole: the chunked loss sums in another order, and AdamW's
        # division by sqrt(v) magnifies rounding in elements whose gradient is near zero.
        rel = ((b - a).norm() / a.norm()).item()
        assert rel < 1e-5, f"{name}: relative error {rel:.2e}"


@pytest.mark.parametrize(("optimizer", "bytes_a_parameter"), [("adamw", 16), ("sgd", 12)])
def test_a_cpu_job_whose_weights_and_optimizer_state_exceed_free_memory_is_refused_before_it_starts(
    corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, optimizer: str, bytes_a_parameter: int
) -> None:
    """On a CPU the system grants what does not fit and kills the process later with no message; the
    trainer refuses such a job first, naming the keys to lower. The bound is the weights, their gradients
    and the optimizer's state in fp32, of the model as it is built (a tied head counted once)."""
    cfg = tiny_config(corpus, tmp_path / "run", optimizer=optimizer, tie_embeddings=True)
    n_params = sum(p.numel() for p in Trainer(cfg).model.parameters())
    need = n_params * bytes_a_parameter
    monkeypatch.setattr("muomni.training.autofit.available_cpu_memory", lambda: need)
    Trainer(cfg)  # exactly enough: runs
    monkeypatch.setattr("muomni.training.autofit.available_cpu_memory", lambda: need - 1)
    with pytest.raises(OutOfMemory, match=r"needs at least .* GiB .* this machine has .* free: lower d_model"):
        Trainer(cfg)


@pytest.mark.parametrize(
    ("keys", "said"),
    [
        ({"auto_fit": True}, "auto_fit acts on CUDA's out-of-memory errors"),
        ({"cpu_offload": "activations"}, "cpu_offload=activations moves GPU memory to the CPU"),
        ({"cpu_offload": "optimizer"}, "cpu_offload=optimizer moves GPU memory to the CPU"),
    ],
)
def test_a_memory_key_a_cpu_cannot_act_on_says_so(corpus: Path, tmp_path: Path, keys: dict, said: str) -> None:
    with pytest.warns(UserWarning, match=said):
        Trainer(tiny_config(corpus, tmp_path / "run", **keys))
    with warnings.catch_warnings():  # their defaults say nothing
        warnings.simplefilter("error")
        Trainer(tiny_config(corpus, tmp_path / "plain"))
