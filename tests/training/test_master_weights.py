"""``weight_dtype=bf16``: bf16 weight copies for the linear layers, fp32 master weights in the optimizer.

The references: autocast's own gradients (the copies must give them exactly), PyTorch's AdamW (the update),
the PyTorch-ops update (the Triton kernel), an fp32-weight run (the training curve), and an uninterrupted
run (kill and resume).
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import torch
from training_helpers import final_weights, overrides, read_metrics, run_cli, tiny_config, tiny_settings

from muomni.config import load_config
from muomni.errors import ConfigError
from muomni.models.thinker import Thinker
from muomni.training import master_weights
from muomni.training.checkpoint import MODEL_FILE, OPTIMIZER_FILE, latest_checkpoint, load_tensors
from muomni.training.loss import LossModule
from muomni.training.master_weights import MasterWeightAdamW, _adamw_reference, attach_compute_weights
from muomni.training.optim import param_groups
from muomni.training.startup import describe_run
from muomni.training.trainer import Trainer

BF16 = {"use_amp": True, "amp_dtype": "bf16", "dropout": 0.0}


def _model(corpus: Path, tmp_path: Path) -> Thinker:
    torch.manual_seed(0)
    return Thinker(tiny_config(corpus, tmp_path, **BF16))


def _loss_and_grads(model: Thinker, tokens: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, n = LossModule(model, chunked=True)(tokens)
    (loss / n).backward()
    grads = {}
    for name, module in model.named_modules():
        copy = getattr(module, "compute_weight", None)
        if copy is not None:
            grads[f"{name}.weight"] = copy.grad
    for name, p in model.named_parameters():
        grads.setdefault(name, p.grad)
    return loss.detach(), grads


def test_bf16_copies_give_autocasts_gradients_exactly(corpus: Path, tmp_path: Path) -> None:
    tokens = torch.randint(0, 300, (4, 33), generator=torch.Generator().manual_seed(1))
    reference = _model(corpus, tmp_path)
    model = _model(corpus, tmp_path)
    copies = attach_compute_weights(model)
    assert len(copies) == 2 * 7 + 1  # q, k, v, o, gate, up, down a layer, and the head
    assert all(c.dtype == torch.bfloat16 and torch.equal(c, p.to(torch.bfloat16)) for p, c in copies.items())
    loss_ref, grads_ref = _loss_and_grads(reference, tokens)
    loss, grads = _loss_and_grads(model, tokens)
    assert torch.equal(loss, loss_ref)
    assert grads.keys() == grads_ref.keys()
    for name, g in grads.items():
        shadowed = g.dtype == torch.bfloat16
        assert shadowed == any(name.endswith(f"{k}.weight") for k in ("proj", "lm_head")), name
        assert torch.equal(g.float(), grads_ref[name]), f"{name}: the copy's gradient is not autocast's"
    assert all(p.grad is None for p in copies)  # the fp32 weights get no gradient of their own


def _optimizers(model: torch.nn.Module, copies: dict) -> tuple[MasterWeightAdamW, torch.optim.AdamW, list]:
    groups = [{k: v for k, v in g.items() if k != "names"} for g in param_groups(model, 0.1)]
    twins = [{**g, "params": [p.detach().clone().requires_grad_() for p in g["params"]]} for g in groups]
    ours = MasterWeightAdamW(groups, copies, lr=1e-2, betas=(0.9, 0.95), eps=1e-8)
    theirs = torch.optim.AdamW(twins, lr=1e-2, betas=(0.9, 0.95), eps=1e-8)
    pairs = [(p, q) for g, h in zip(groups, twins) for p, q in zip(g["params"], h["params"])]
    return ours, theirs, pairs


def _triton_runs_here() -> bool:
    return torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"


@pytest.mark.parametrize("clip", [False, True])
@pytest.mark.parametrize("triton", [False, True], ids=["pytorch_ops", "triton"])
def test_update_is_pytorch_adamws_and_writes_the_copies(
    corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clip: bool, triton: bool
) -> None:
    # The optimizer's own paths: PyTorch ops, or its Triton kernels (on a GPU when there is one, else on
    # this CPU in Triton's interpreter).
    if triton and not _triton_runs_here():
        pytest.skip("Triton's interpreter was not switched on before Triton was imported")
    monkeypatch.setattr(master_weights, "TRITON_DEVICES", {"cuda", "cpu"} if triton else set())
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = _model(corpus, tmp_path).to(device)
    copies = attach_compute_weights(model)
    ours, theirs, pairs = _optimizers(model, copies)
    assert ours.triton is triton
    built: list[int] = []  # tables the Triton path builds: a step's gradients' once, for the norm and the update
    if triton:
        from muomni.training import triton_adamw

        build = triton_adamw.tensor_list
        monkeypatch.setattr(triton_adamw, "tensor_list", lambda ts, dev: built.append(len(ts)) or build(ts, dev))
    gen = torch.Generator().manual_seed(2)
    for step in range(4):
        for p, q in pairs:
            # Representable in bf16: the same gradient for both optimizers.
            g = torch.randn(p.shape, generator=gen).to(device, torch.bfloat16)
            copies.get(p, p).grad = g if p in copies else g.float()
            q.grad = g.float()
        classes = len(ours._classes())  # one kernel launch each
        norm = torch.linalg.vector_norm(torch.stack([q.grad.double().norm() for _, q in pairs]))
        torch.testing.assert_close(ours.grad_norm().double(), norm, rtol=1e-6, atol=0)
        divisor = torch.tensor(3.0, device=device) if clip else None
        if divisor is not None:
            ours.grad_scale = divisor
            for _, q in pairs:
                q.grad /= divisor
        skip = step == 2
        ours.found_inf = torch.tensor(float(skip), device=device)
        before = [p.detach().clone() for p, _ in pairs]
        ours.step()
        if not skip:
            theirs.step()
        del ours.found_inf
        if clip:
            del ours.grad_scale
        for (p, q), b in zip(pairs, before):
            if skip:
                assert torch.equal(p, b)
            torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-6, atol=1e-7)
            if p in copies:
                assert torch.equal(copies[p], p.detach().to(torch.bfloat16))
        ours.zero_grad()
        assert all(c.grad is None for c in copies.values())
        if triton and step > 0:  # (the first step also builds the weights' and moments' tables, once)
            assert len(built) == classes, built
        built.clear()
    assert float(ours.state[pairs[0][0]]["step"]) == 3  # the skipped step is not counted
    sd, ref_sd = ours.state_dict(), theirs.state_dict()
    assert sd["state"].keys() == ref_sd["state"].keys()
    for i, state in sd["state"].items():
        assert state.keys() == ref_sd["state"][i].keys()
        torch.testing.assert_close(state["exp_avg_sq"], ref_sd["state"][i]["exp_avg_sq"], rtol=1e-5, atol=1e-12)


def test_the_triton_launches_are_profiled_inside_the_optimizer_step(
    corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # muomni profile gives a kernel to the ranges around the host operation that launched it; a bare Triton
    # launch is no operation, so the update and the norm run inside ranges of their own.
    if not _triton_runs_here():
        pytest.skip("Triton's interpreter was not switched on before Triton was imported")
    from torch.profiler import ProfilerActivity, profile

    from muomni.training import triton_adamw

    monkeypatch.setattr(master_weights, "TRITON_DEVICES", {"cuda", "cpu"})
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = _model(corpus, tmp_path).to(device)
    copies = attach_compute_weights(model)
    ours, _, pairs = _optimizers(model, copies)
    for p, _ in pairs:
        copies.get(p, p).grad = torch.ones_like(copies.get(p, p))
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        ours.grad_norm()
        ours.step()

    def ancestors(event: object) -> list[str]:
        names = []
        while (event := event.cpu_parent) is not None:
            names.append(event.name)
        return names

    events = prof.events()
    norms = [e for e in events if e.name == triton_adamw.SQUARES_RANGE]
    updates = [e for e in events if e.name == triton_adamw.ADAMW_RANGE]
    classes = len(ours._classes())
    assert len(norms) == len(updates) == classes  # one launch a class
    assert all("Optimizer.step#MasterWeightAdamW.step" in ancestors(e) for e in updates)


# Sizes crossing a block and smaller than one; and all multiples of 16, where the kernel's loads go 16
# bytes at a time on a GPU.
@pytest.mark.parametrize("sizes", [[(4096 + 5,), (7, 33), (3,)], [(2 * 4096,), (48, 16), (16,)]])
def test_triton_kernel_matches_the_pytorch_ops(sizes: list[tuple[int, ...]]) -> None:
    if not _triton_runs_here():
        pytest.skip("Triton's interpreter was not switched on before Triton was imported")
    from muomni.training.triton_adamw import adamw_step, block_tables, sum_of_squares, tensor_list

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    gen = torch.Generator().manual_seed(3)
    group = {"lr": 3e-3, "betas": (0.9, 0.95), "eps": 1e-8, "weight_decay": 0.1}
    for grad_bf16 in (True, False):
        for divisor in (None, torch.tensor(2.5, device=device)):
            weights = [torch.randn(s, generator=gen).to(device) for s in sizes]
            grads = [
                torch.randn(s, generator=gen).to(device, torch.bfloat16 if grad_bf16 else torch.float32) for s in sizes
            ]
            exp_avgs = [torch.randn(s, generator=gen).to(device) * 0.1 for s in sizes]
            exp_avg_sqs = [torch.rand(s, generator=gen).to(device) * 0.01 for s in sizes]
            copies = [w.to(torch.bfloat16) for w in weights]
            squares = sum_of_squares(block_tables([g.numel() for g in grads], device), tensor_list(grads, device))
            expected_squares = sum(g.double().square().sum() for g in grads)
            torch.testing.assert_close(squares.double(), expected_squares, rtol=1e-6, atol=0)
            steps = torch.tensor(4.0, device=device)
            expected = [t.clone() for t in (*weights, *exp_avgs, *exp_avg_sqs)]
            ref_w, ref_m, ref_v = expected[:3], expected[3:6], expected[6:]
            for i in range(3):
                _adamw_reference(ref_w[i], grads[i], ref_m[i], ref_v[i], None, steps, divisor, group)
            for skip in (1.0, 0.0):
                adamw_step(
                    block_tables([w.numel() for w in weights], device),
                    *(tensor_list(ts, device) for ts in (weights, grads, exp_avgs, exp_avg_sqs, copies)),
                    steps,
                    torch.tensor(skip, device=device),
                    divisor,
                    lr=group["lr"],
                    betas=group["betas"],
                    eps=group["eps"],
                    weight_decay=group["weight_decay"],
                )
                if skip:  # nothing moved
                    assert all(torch.equal(c, w.to(torch.bfloat16)) for c, w in zip(copies, weights))
                    assert not any(torch.equal(w, r) for w, r in zip(weights, ref_w))
            for got, want in zip((*weights, *exp_avgs, *exp_avg_sqs), (*ref_w, *ref_m, *ref_v)):
                torch.testing.assert_close(got, want, rtol=2e-6, atol=1e-7)
            assert all(torch.equal(c, w.to(torch.bfloat16)) for c, w in zip(copies, weights))


def _train(corpus: Path, tmp_path: Path, name: str, steps: int = 6, **changes) -> tuple[list, dict, Trainer]:
    t = Trainer(tiny_config(corpus, tmp_path / name, **{**BF16, **changes}))
    results = [t.train_step(t.next_batches()) for _ in range(steps)]
    weights = {k: v.detach().clone() for k, v in t.model.state_dict().items()}
    return [(r.loss, r.grad_norm) for r in results], weights, t


@pytest.mark.parametrize("accumulation", [1, 2])
def test_training_with_bf16_weights_follows_autocast(corpus: Path, tmp_path: Path, accumulation: int) -> None:
    batch = 4 // accumulation
    common = {"batch_size": batch, "gradient_accumulation_steps": accumulation}
    curve_ref, weights_ref, _ = _train(corpus, tmp_path, "fp32", **common)
    curve, weights, trainer = _train(corpus, tmp_path, "bf16", weight_dtype="bf16", **common)
    assert isinstance(trainer.optimizer, MasterWeightAdamW)
    assert "bf16 linear weights" in "\n".join(describe_run(trainer))
    assert curve[0][0] == curve_ref[0][0]  # the first step's loss: the same forward, bit for bit
    assert curve[0][1] == pytest.approx(curve_ref[0][1], rel=1e-6)  # its norm: fp32 sums of the same values
    for (loss, norm), (loss_ref, norm_ref) in zip(curve, curve_ref):
        # Later steps differ where an update rounds a weight's bf16 copy the other way (PyTorch's AdamW and
        # this one round differently in the last bit): a few bf16 steps of 0.4% in a few weights.
        assert loss == pytest.approx(loss_ref, rel=1e-4)
        assert norm == pytest.approx(norm_ref, rel=1e-2)
    start = Trainer(tiny_config(corpus, tmp_path / "start", **BF16, **common)).model.state_dict()
    for name, w in weights.items():
        assert w.dtype == torch.float32, name  # the model's weights stay fp32 masters
        rel = ((w - weights_ref[name]).norm() / (w - start[name]).norm()).item()
        assert rel < 1e-2, f"{name}: {rel:.2e} of its update differs from the fp32-weight run's"
    for p, copy in trainer.optimizer.compute_weights.items():
        assert torch.equal(copy, p.detach().to(torch.bfloat16))


@pytest.mark.filterwarnings("ignore:distributed=.* but not started by torchrun")  # refused all the same
def test_refused_without_bf16_autocast_with_sgd_and_with_fsdp(corpus: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="weight_dtype.*bf16 autocast"):
        Trainer(tiny_config(corpus, tmp_path / "a", weight_dtype="bf16"))
    with pytest.raises(ConfigError, match="weight_dtype.*AdamW"):
        Trainer(tiny_config(corpus, tmp_path / "b", weight_dtype="bf16", optimizer="sgd", **BF16))
    # FSDP gathers the weights in bf16 itself; DDP takes the key (tests/distributed).
    with pytest.raises(ConfigError, match="weight_dtype.*FSDP.*use distributed=ddp, or weight_dtype=fp32"):
        Trainer(tiny_config(corpus, tmp_path / "c", weight_dtype="bf16", distributed="fsdp", **BF16))
    with pytest.raises(ConfigError, match="weight_dtype"):
        load_config({"weight_dtype": "fp16"})


def test_kill_and_resume_with_bf16_weights_is_bitwise_equal(corpus: Path, tmp_path: Path) -> None:
    settings = {**BF16, "weight_dtype": "bf16", "max_steps": 8}
    cache = tmp_path / "cache"

    def train(save_dir: Path, env: dict[str, str] | None = None):
        return run_cli(["train", *overrides(tiny_settings(corpus, save_dir, **settings))], cache, env)

    reference, run = tmp_path / "reference", tmp_path / "run"
    done = train(reference)
    assert done.returncode == 0, done.stderr
    assert "bf16 linear weights" in done.stdout
    killed = train(run, env={"MUOMNI_TEST_KILL_AT": "after_ckpt:4"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    resumed = train(run)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from" in resumed.stdout
    for name, weights in final_weights(reference).items():
        assert weights.dtype == torch.float32
        assert torch.equal(weights, final_weights(run)[name]), f"{name} differs from the uninterrupted run"
    keys = ("step", "loss", "grad_norm", "val_loss")
    assert [[m.get(k) for k in keys] for m in read_metrics(run)] == [
        [m.get(k) for k in keys] for m in read_metrics(reference)
    ]
    # The files are those of fp32 weights and PyTorch's AdamW: fp32 weights, one step count, two moments each.
    ckpt = latest_checkpoint(run)
    assert all(t.dtype == torch.float32 for t in load_tensors(ckpt / MODEL_FILE).values())
    state = load_tensors(ckpt / OPTIMIZER_FILE)
    assert {k.split(".", 2)[2] for k in state} == {"step", "exp_avg", "exp_avg_sq"}
    assert all(float(v) == 8 for k, v in state.items() if k.endswith(".step"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the Triton path of the trainer needs a GPU")
def test_on_a_gpu_bf16_weights_follow_autocast(corpus: Path, tmp_path: Path) -> None:
    # The trainer's GPU path: the norm and the update in the Triton kernels, skipped and clipped on the device.
    common = {"device": "cuda", "max_grad_norm": 0.05}
    curve_ref, weights_ref, _ = _train(corpus, tmp_path, "fp32", **common)
    curve, weights, trainer = _train(corpus, tmp_path, "bf16", weight_dtype="bf16", **common)
    assert trainer.optimizer.defaults["fused"] and trainer.skips_on_device
    assert curve[0][0] == curve_ref[0][0]
    assert curve[0][1] == pytest.approx(curve_ref[0][1], rel=1e-5)
    for (loss, norm), (loss_ref, norm_ref) in zip(curve, curve_ref):
        assert loss == pytest.approx(loss_ref, rel=1e-3) and norm == pytest.approx(norm_ref, rel=2e-2)
    for name, w in weights.items():
        rel = ((w - weights_ref[name]).norm() / w.norm()).item()
        assert rel < 1e-3, f"{name}: relative difference {rel:.2e} from the fp32-weight run"
    for p, copy in trainer.optimizer.compute_weights.items():
        assert torch.equal(copy, p.detach().to(torch.bfloat16))
