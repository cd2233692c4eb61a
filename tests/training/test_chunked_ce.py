"""Chunked linear cross-entropy equals the plain loss and its gradients (fp32, 1e-5)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from functools import partial

import pytest
import torch
import torch.nn.functional as F

from muomni.training import chunked_ce
from muomni.training.chunked_ce import chunked_linear_cross_entropy

KERNEL_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(params=["torch", "kernel"])
def device(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Where to run: each chunk by PyTorch's operations on the CPU, or by the Triton kernel on the GPU
    (in Triton's interpreter on the CPU without one)."""
    if request.param == "torch":
        monkeypatch.setattr(chunked_ce, "CE_KERNEL_DEVICES", set())
        return "cpu"
    pytest.importorskip("triton")
    monkeypatch.setattr(chunked_ce, "CE_KERNEL_DEVICES", {KERNEL_DEVICE})
    return KERNEL_DEVICE


def plain_loss(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    logits = hidden.reshape(-1, hidden.shape[-1]) @ weight.t()
    return F.cross_entropy(logits, targets.reshape(-1), reduction="sum", ignore_index=-100)


@pytest.mark.parametrize("chunk_size", [1, 7, 64, 4096])
def test_loss_and_gradients_equal_plain(chunk_size: int, device: str) -> None:
    torch.manual_seed(0)
    hidden = torch.randn(3, 21, 24, device=device, requires_grad=True)
    weight = torch.randn(97, 24, device=device, requires_grad=True)
    targets = torch.randint(0, 97, (3, 21), device=device)
    targets[1, 5] = -100  # ignored positions count for nothing
    scale = 1.0 / 62  # the trainer divides by the window's target count
    chunked = chunked_linear_cross_entropy(hidden, weight, targets, chunk_size=chunk_size)
    (chunked * scale).backward()
    grads = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    plain = plain_loss(hidden, weight, targets)
    (plain * scale).backward()
    assert torch.allclose(chunked, plain, rtol=1e-5, atol=0)
    assert torch.allclose(grads[0], hidden.grad, rtol=1e-5, atol=1e-7)
    assert torch.allclose(grads[1], weight.grad, rtol=1e-5, atol=1e-7)


def test_tied_weight_gets_both_gradients(device: str) -> None:
    """With tied embeddings the head weight also feeds the input: both gradient paths must add up."""
    torch.manual_seed(1)
    emb = torch.nn.Embedding(50, 16, device=device)
    ids = torch.randint(0, 50, (2, 9), device=device)
    results = []
    for fn in (chunked_linear_cross_entropy, plain_loss):
        emb.zero_grad()
        hidden = torch.tanh(emb(ids[:, :-1]))
        fn(hidden, emb.weight, ids[:, 1:]).backward()
        results.append(emb.weight.grad.clone())
    assert torch.allclose(results[0], results[1], rtol=1e-5, atol=1e-6)  # fp32 sums in another order


def test_bf16_autocast_is_close_to_plain_autocast(device: str) -> None:
    torch.manual_seed(2)
    hidden = torch.randn(40, 32, device=device)
    weight = torch.randn(128, 32, device=device)
    targets = torch.randint(0, 128, (40,), device=device)
    with torch.autocast(device, dtype=torch.bfloat16):
        chunked = chunked_linear_cross_entropy(hidden, weight, targets, chunk_size=16)
        plain = F.cross_entropy((hidden @ weight.t()).float(), targets, reduction="sum")
    assert chunked.dtype == torch.float32
    assert torch.allclose(chunked, plain, rtol=2e-3)


def test_traced_chunks_equal_plain(device: str) -> None:
    """Traced by torch.compile, a chunk makes its gradient from a one-hot comparison instead of the eager
    in-place scatter, or calls the kernel's custom op: the same loss and gradients, ignored targets included."""
    torch.manual_seed(3)
    hidden = torch.randn(2, 13, 24, device=device, requires_grad=True)
    weight = torch.randn(97, 24, device=device, requires_grad=True)
    targets = torch.randint(0, 97, (2, 13), device=device)
    targets[0, 3] = -100
    traced = torch.compile(chunked_linear_cross_entropy, backend="aot_eager", fullgraph=True)
    results = []
    for fn in (partial(traced, chunk_size=8), plain_loss):
        hidden.grad = weight.grad = None
        loss = fn(hidden, weight, targets)
        loss.backward()
        results.append((loss.detach(), hidden.grad.clone(), weight.grad.clone()))
    # The kernel on a GPU sums in fp32 in another order than PyTorch's softmax there: on an H200 one element
    # of hidden.grad was 2e-6 away (2.3e-5 of itself), where a wrong gradient is off by a tenth.
    atol = 1e-5 if device == "cuda" and device in chunked_ce.CE_KERNEL_DEVICES else 1e-6
    for name, got, want in zip(("loss", "hidden.grad", "weight.grad"), *results, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=atol, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("in_place", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("block", [64, None])
def test_kernel_rows_match_log_softmax(
    dtype: torch.dtype, block: int | None, in_place: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The kernel against PyTorch's log-softmax, in fp32: losses (0 where ignored) and softmax - one_hot.
    Rows of 300 columns in one block, or in blocks of 64 (the last one partly past the row); the gradient
    in a buffer of its own, or over the logits."""
    triton_ce = pytest.importorskip("muomni.training.triton_ce")
    if block is not None:
        monkeypatch.setattr(triton_ce, "BLOCK", block)
    torch.manual_seed(4)
    logits = (torch.randn(6, 300) * 4).to(dtype).to(KERNEL_DEVICE)
    logits[2, 17] = 60.0  # a row dominated by one column: the maximum must be taken out before exp
    targets = torch.tensor([5, 299, 17, -100, 0, 128], device=KERNEL_DEVICE)
    x = logits.float().clone()  # before an in-place call overwrites the logits
    losses, grad = triton_ce.cross_entropy_rows(logits, targets, -100, out=logits if in_place else None)
    assert (grad.data_ptr() == logits.data_ptr()) is in_place
    keep = targets != -100
    safe = torch.where(keep, targets, 0)
    want_losses = -x.log_softmax(-1).gather(1, safe[:, None]).squeeze(1) * keep
    want_grad = x.softmax(-1) - F.one_hot(safe, 300).float()  # on the GPU, PyTorch's own kernels
    assert losses.dtype == torch.float32 and grad.dtype == dtype
    torch.testing.assert_close(losses, want_losses, rtol=1e-5, atol=1e-5)
    assert losses[3] == 0  # the ignored row
    tolerance = {"rtol": 1e-5, "atol": 1e-6} if dtype == torch.float32 else {"rtol": 1e-2, "atol": 4e-3}
    torch.testing.assert_close(grad.float(), want_grad.to(dtype).float(), **tolerance)


COMPILE_FOR_HOPPER = """
import json
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from muomni.training import triton_ce

kernel, results = triton_ce._cross_entropy_rows_kernel, {}
for value in ("*bf16", "*fp32"):
    signature = {arg: "constexpr" if arg == "BLOCK" else value if arg in ("logits_ptr", "grad_ptr") else
                 "*i64" if arg == "targets_ptr" else "*fp32" if arg == "loss_ptr" else "i32"
                 for arg in kernel.arg_names}
    constexprs = {(kernel.arg_names.index("BLOCK"),): triton_ce.BLOCK}
    try:
        source = ASTSource(fn=kernel, signature=signature, constexprs=constexprs)
        options = {"num_warps": triton_ce.WARPS}
        results[value] = triton.compile(source, target=GPUTarget("cuda", 90, 32), options=options).metadata.shared
    except Exception as e:  # a compiler error, or no CUDA tool chain here (ptxas), or an older compiler API
        results[value] = type(e).__name__ + ": " + str(e)[-600:]
print(json.dumps(results))
"""


def test_kernel_compiles_for_hopper() -> None:
    """Triton's interpreter runs the kernel on a CPU without compiling it: here Triton's compiler takes it
    for sm_90, bf16 and fp32 logits (in a child process, without the interpreter)."""
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    args = [sys.executable, "-c", COMPILE_FOR_HOPPER]
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300, check=True)
    results = json.loads(done.stdout.strip().splitlines()[-1])
    for dtype, result in results.items():
        if isinstance(result, str) and "CompilationError" not in result:
            pytest.skip(f"{dtype}: {result[:200]}")  # no back end here, or an older compiler API
        assert isinstance(result, int), f"{dtype}: {result}"  # the shared memory it asks for
