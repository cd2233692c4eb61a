"""What choosing a token costs beside the greedy argmax, and what three changes bought (GPU or CPU).

The changes: the exponential race run in log space (argmax of logits / T - log E, no softmax; 21375c7),
top-p's running sum of the sorted probabilities taken in blocks of 256 (one running sum over 32,000 did not
compile for 4 to 64 rows on a GPU; 21375c7), and top-p without a sort on a Triton device (a bisection
kernel, one program a row: its first version in 4d3d6b1, slower and taken out in 9add6b8, its variants in
top_p_kernel_variants.py; its second in 8bdd0ad, muomni/inference/triton_top_p.py). "Before" is the code
of a37d5c7, copied here; "sort" is the blockwise sort of 21375c7; "now" is the tree's own code (the kernel
on CUDA in 4d3d6b1 and from 8bdd0ad; the sort on 9add6b8's tree, where "sort" is the same).

Part 1, alone: one decode step's choice over [B, 32000] fp32 logits, eager and compiled (the compiled call
replayed from a CUDA graph of 20 calls on a GPU, so launches are not timed); a compile that fails is
recorded with its error.
Part 2, end to end: the bench's decode rows (tiny and small presets, bf16 on a GPU, 512 new tokens),
greedy, sampled (temperature 0.8) and top-p 0.9, with the package's code and with top-p by the sort.

    PYTHONPATH=. python3 docs/results/sampling_probe.py OUT.json [--alone] [--radix]
        [--presets=tiny,small] [--batches=1,16]
"""

from __future__ import annotations

import json
import sys
import time

import torch

from muomni.inference import sampling

V = 32000
P = 0.9
T = 0.8
BATCHES = next(
    (tuple(map(int, a.split("=", 1)[1].split(","))) for a in sys.argv if a.startswith("--batches=")), (1, 4, 16, 64)
)
PRESETS = next((a.split("=", 1)[1].split(",") for a in sys.argv if a.startswith("--presets=")), ["tiny", "small"])


def top_p_before(logits: torch.Tensor, p: float) -> torch.Tensor:
    """muomni's top-p before: one running sum over each sorted row."""
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True, stable=True)
    probs = sorted_logits.softmax(dim=-1)
    mass_from_here_down = probs.flip(-1).cumsum(dim=-1).flip(-1)
    drop_sorted = mass_from_here_down <= 1.0 - p
    drop_sorted[:, 0] = False
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def top_p_radix(logits: torch.Tensor, p: float) -> torch.Tensor:
    """The kept set of the top-p rule without a sort: the boundary value found 16 bits at a time.

    Tried and not kept (slower than the sort on the H200; see docs/BENCHMARKS.md); run with --radix."""
    probs = logits.softmax(dim=-1)
    bits = probs.view(torch.int32)  # probabilities are >= 0: their bit patterns order as they do
    batch = probs.shape[0]
    mass = probs.double()
    budget = (1.0 - p) * mass.sum(dim=-1, keepdim=True)  # mass that may be dropped
    prefix = torch.zeros(batch, 1, dtype=torch.int32, device=probs.device)
    for shift in (16, 0):
        digit = ((bits >> shift) & 0xFFFF).long()
        if shift == 0:  # only the values whose high half is the boundary's
            digit = torch.where((bits >> 16) == (prefix >> 16), digit, 0x10000)
        hist = torch.zeros(batch, 0x10001, dtype=torch.float64, device=probs.device).scatter_add_(1, digit, mass)
        cum = hist[:, :-1].cumsum(dim=-1)
        d = (cum <= budget).sum(dim=-1, keepdim=True).clamp_max(0xFFFF)
        budget = budget - torch.where(d > 0, cum.gather(1, (d - 1).clamp_min(0)), 0.0)
        prefix = prefix | (d.int() << shift)
    ties = bits == prefix
    rank = ties.flip(-1).cumsum(-1).flip(-1)
    value = prefix.view(torch.float32).double()
    drop = (bits < prefix) | (ties & (rank * value <= budget))
    drop &= torch.arange(probs.shape[1], device=probs.device) != probs.argmax(dim=-1, keepdim=True)
    return logits.masked_fill(drop, float("-inf"))


def sample_before(logits: torch.Tensor, params: sampling.SamplingParams, noise: torch.Tensor | None) -> torch.Tensor:
    """muomni's sample before: the race as p / E after a softmax, and the top-p above."""
    if params.greedy:
        return sampling.argmax(logits)
    logits = logits.float()
    logits = (logits - logits.amax(dim=-1, keepdim=True)) / params.temperature
    if params.top_k > 0:
        logits = sampling._top_k(logits, params.top_k)
    if params.top_p < 1.0:
        logits = top_p_before(logits, params.top_p)
    return sampling.argmax(logits.softmax(dim=-1) / noise)


# Trees with the kernel choose top-p by it on CUDA where top_p_kernel_ready says so; 9add6b8's always sorts.
HAS_KERNEL = hasattr(sampling, "top_p_kernel_ready")


def sample_by_sort(logits: torch.Tensor, params: sampling.SamplingParams, noise: torch.Tensor) -> torch.Tensor:
    """muomni's sample with top-p by the blockwise sort, as off a Triton device."""
    if not HAS_KERNEL:
        return sampling.sample(logits, params, noise)
    ready = sampling.top_p_kernel_ready
    sampling.top_p_kernel_ready = lambda x: False
    try:
        return sampling.sample(logits, params, noise)
    finally:
        sampling.top_p_kernel_ready = ready


def choices() -> dict:
    greedy, sampled = sampling.SamplingParams(0.0), sampling.SamplingParams(T)
    top_p = sampling.SamplingParams(T, 0, P)
    found = {
        "greedy": lambda x, e: sampling.sample(x, greedy, None),
        "sampled, before": lambda x, e: sample_before(x, sampled, e),
        "sampled, now": lambda x, e: sampling.sample(x, sampled, e),
        "top-p, before": lambda x, e: sample_before(x, top_p, e),
        "top-p, sort": lambda x, e: sample_by_sort(x, top_p, e),
        "top-p, now": lambda x, e: sampling.sample(x, top_p, e),
    }
    if "--radix" in sys.argv:

        def radix(x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
            scaled = (x.float() - x.float().amax(-1, keepdim=True)) / T
            return sampling.argmax(top_p_radix(scaled, P).softmax(-1) / e)

        found["top-p, radix"] = radix
    return found


def timed(fn, x, e, device: torch.device, calls: int = 20, rounds: int = 5) -> float:
    """Microseconds a call: a CUDA graph of ``calls`` calls replayed on a GPU, plain calls elsewhere."""
    for _ in range(3):
        fn(x, e)
    if device.type == "cuda":
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            fn(x, e)
        torch.cuda.current_stream().wait_stream(side)
        with torch.cuda.graph(graph):
            for _ in range(calls):
                fn(x, e)
        best = float("inf")
        for _ in range(rounds):
            torch.cuda.synchronize()
            start = time.perf_counter()
            graph.replay()
            torch.cuda.synchronize()
            best = min(best, (time.perf_counter() - start) / calls)
        return 1e6 * best
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(calls):
            fn(x, e)
        best = min(best, (time.perf_counter() - start) / calls)
    return 1e6 * best


def part_alone(device: torch.device) -> list[dict]:
    out = []
    gen = torch.Generator(device).manual_seed(0)
    for batch in BATCHES:
        x = torch.randn(batch, V, device=device, generator=gen) * 3
        e = sampling.draw_noise((batch, V), device, gen)
        for p in (0.5, 0.9, 0.99, 0.999):  # the blockwise sums keep the set the single running sum kept
            assert torch.equal(sampling._top_p(x, p) > float("-inf"), top_p_before(x, p) > float("-inf"))
        for name, fn in choices().items():
            row = {"batch": batch, "choice": name, "eager_us": timed(fn, x, e, device)}
            torch._dynamo.reset()
            compiled = torch.compile(fn, fullgraph=True, dynamic=False)
            try:
                row["compiled_us"] = timed(compiled, x, e, device)
                row["compiled_equals_eager"] = torch.equal(compiled(x, e), fn(x, e))
            except Exception as error:  # noqa: BLE001 (recorded: a compile that fails is a finding)
                row["compile_error"] = f"{type(error).__name__}: {str(error).splitlines()[0][:300]}"
            print(json.dumps(row), flush=True)
            out.append(row)
    return out


def part_end_to_end(device: torch.device) -> list[dict]:
    from muomni.bench.infer import SAMPLED, TOP_P, _row
    from muomni.config import load_config
    from muomni.models.thinker import Thinker

    out = []
    labels = (("greedy", sampling.SamplingParams(0.0)), ("sampled", SAMPLED), ("top-p", TOP_P))
    ready = sampling.top_p_kernel_ready if HAS_KERNEL else None
    for preset in PRESETS:
        torch.manual_seed(0)
        model = Thinker(load_config(preset)).to(device).eval()
        model = model.to(torch.bfloat16) if device.type == "cuda" else model
        new = min(512 if device.type == "cuda" else 32, model.config.ctx_len - 16)
        for code in ("now", "sort") if HAS_KERNEL else ("now",):
            if HAS_KERNEL:
                sampling.top_p_kernel_ready = ready if code == "now" else (lambda x: False)
            model.__dict__.pop("_muomni_compiled_decode", None)
            torch._dynamo.reset()
            for batch in (1, 16):
                for label, params in labels:
                    if code == "sort" and label != "top-p":
                        continue  # the same code as now
                    r = _row(model, f"{preset} b{batch} {label} {code}", batch, new, compile=True, sampling=params)
                    fields = ("name", "batch", "tokens_per_s_total", "ms_per_step", "all_runs_tokens_per_s")
                    keep = {k: r[k] for k in fields}
                    print(json.dumps(keep), flush=True)
                    out.append(keep)
        if HAS_KERNEL:
            sampling.top_p_kernel_ready = ready
        del model
    return out


def main() -> None:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    report = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
    }
    report["alone"] = part_alone(device)
    if "--alone" not in sys.argv:
        report["end_to_end"] = part_end_to_end(device)
    with open(sys.argv[1], "w") as f:
        json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
