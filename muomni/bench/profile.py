"""``muomni profile``: a few training (and, with ``--infer``, decoding) steps under ``torch.profiler``.

Writes a Chrome/Perfetto trace (``trace_train.json``, open it at ui.perfetto.dev) and a memory timeline,
then prints the top operators by device time and by memory, the share of time spent in attention, MLP,
the loss, the backward pass, the optimizer and data loading, and on a GPU the kernels that take the most
device time, the device time per step by kind of kernel (matrix products, attention, Triton's fused
elementwise kernels, muomni's own kernels, optimizer, copies) and how long the device ran nothing (which
the labels cannot show inside a compiled graph). With ``--infer`` on a GPU, compiled decoding too (the
path of ``generate --compile``), each kernel with what it adds to a token's device time. Attention and MLP are
labelled by forward hooks added from outside the model (the forward itself has no profiling code), in the
forward pass only; the backward pass is one block, because autograd runs it outside those labels (and a
block that gradient checkpointing recomputes there is not labelled again).
"""

from __future__ import annotations

import argparse
import json
import shutil
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile, record_function

from muomni.bench.device_time import (
    critical_path_lines,
    device_breakdown,
    device_kernels,
    print_breakdown,
    top_kernels,
)
from muomni.bench.options import check_out_folder, check_steps, json_object, warn_set_here
from muomni.config import Config, load_config

REGIONS = ("attention", "mlp", "loss", "backward", "optimizer", "data")
DECODE_TOKENS = 64  # compiled decoding profiled on a GPU (at most): its figures are per generated token


@contextmanager
def labelled(model: torch.nn.Module) -> Iterator[None]:
    """Wrap every attention and MLP forward of the forward pass in a ``record_function`` range while
    profiling; a recomputation in the backward pass is left unlabelled (see :func:`_in_backward`)."""
    handles, open_ranges = [], {}

    def enter(name: str):  # noqa: ANN202
        def hook(module, args):  # noqa: ANN001, ANN202
            if _in_backward():
                return
            ctx = record_function(name)
            ctx.__enter__()
            open_ranges[id(module)] = ctx

        return hook

    def leave(module, args, out):  # noqa: ANN001, ANN202
        ctx = open_ranges.pop(id(module), None)  # None: a recomputation in the backward pass, not labelled
        if ctx is not None:
            ctx.__exit__(None, None, None)

    handles += [model.model.register_forward_pre_hook(enter("backbone")), model.model.register_forward_hook(leave)]
    for block in model.model.layers:
        for name, m in (("attention", block.self_attn), ("mlp", block.mlp)):
            handles += [m.register_forward_pre_hook(enter(name)), m.register_forward_hook(leave)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _in_backward() -> bool:
    """Whether this thread runs inside the autograd engine's backward pass (the training thread on the CPU,
    the engine's own thread on CUDA).

    Gradient checkpointing runs the blocks' forward again there (the reentrant kind in a backward of its own,
    the other from its unpack hooks). Labelled there too, attention and MLP were counted twice, as themselves
    and inside ``backward`` (the debug preset's shares added up to 128%), though they are meant as the
    forward's. PyTorch has no public test for this; its own non-reentrant checkpointing reads the same id.
    """
    return torch._C._current_graph_task_id() != -1


def _shares(events: list, cuda: bool) -> dict[str, float | None]:
    """Time inside each labelled region as a fraction of the profiled steps' time (None: not labelled).

    ``events``: the profile's events (``prof.events()``). On the CPU: each region's host time over the
    ``train_step`` ranges'. On CUDA: see :func:`_device_shares`. Inside a compiled graph the forward hooks'
    ranges are dropped, so attention and MLP read None there.
    """
    cpu_events = [e for e in events if e.device_type == DeviceType.CPU]
    if cuda:
        return _device_shares(events, cpu_events)
    totals: dict[str, float] = {}
    for e in cpu_events:
        totals[e.name] = totals.get(e.name, 0.0) + float(e.cpu_time_total)
    return _region_shares(totals, totals.get("train_step") or 1.0)


def _region_shares(totals: dict[str, float], whole: float) -> dict[str, float | None]:
    """``totals`` (time by range name, every range present named) as shares of ``whole``; the loss is the
    forward outside the backbone: the output head and the cross-entropy."""
    shares = {r: (totals[r] / whole if r in totals else None) for r in REGIONS}
    if "forward" in totals and "backbone" in totals:
        shares["loss"] = max(totals["forward"] - totals["backbone"], 0.0) / whole
    return shares


def _device_shares(events: list, cpu_events: list) -> dict[str, float | None]:
    """Each region's share of the device's kernel time, every kernel counted once.

    A kernel belongs to the host operation that launched it (``e.kernels``) and so to every labelled range
    around that operation. A range's device time as the profiler totals it (``device_time_total``) will not
    do: it adds the span the range draws on the device timeline, idle gaps included, to its operations'
    kernels, so it counts them twice. And the backward's kernels are in none of the training thread's
    ranges: the autograd engine launches them from a thread of its own, whose kernels are the backward.

    A kernel launched from a range with no operation in between (a Triton kernel's launch is no PyTorch
    operation: MasterWeightAdamW's) is linked to no host operation. It is given to the innermost range whose
    span on the device timeline holds it (:func:`_annotated_regions`). ``unlinked`` is what is left: the
    device time linked to no range at all. Without it the shares would leave that time out without saying so.
    """
    main_threads = {e.thread for e in cpu_events if e.name == "train_step"}
    kernels = device_kernels(events)
    device_total = sum(duration for _, _, duration in kernels)
    totals: dict[str, float] = {}
    linked: dict[str, float] = {}  # by kernel name

    def count(regions: set[str], us: float) -> None:
        for region in regions:
            totals[region] = totals.get(region, 0.0) + us

    for e in cpu_events:
        # A range's own name among its kernels is that span on the device timeline, not a kernel.
        own = [k for k in getattr(e, "kernels", ()) if k.name != e.name]
        if own:
            count(_regions_of(e, main_threads), sum(k.duration for k in own))
        for k in own:
            linked[k.name] = linked.get(k.name, 0.0) + k.duration
    by_name: dict[str, float] = {}
    for name, _, duration in kernels:
        by_name[name] = by_name.get(name, 0.0) + duration
    # A kernel name partly linked (launched both ways) has the rest of its time given out in proportion.
    left = {n: (us - linked.get(n, 0.0)) / us for n, us in by_name.items() if us and us - linked.get(n, 0.0) > 1e-6}
    spans = _annotated_regions(events, cpu_events, main_threads) if left else []
    annotated = 0.0
    for name, start, duration in kernels:
        if name not in left:
            continue
        holding = [s for s in spans if s[0] <= start and start + duration <= s[1]]
        if holding:
            innermost = min(holding, key=lambda s: s[1] - s[0])
            count(innermost[2], duration * left[name])
            annotated += duration * left[name]
    if not device_total:
        return dict.fromkeys((*REGIONS, "unlinked"))
    labelled = {e.name for e in cpu_events} | {"backward"}
    shares = _region_shares({name: totals.get(name, 0.0) for name in labelled}, device_total)
    unlinked = device_total - sum(min(linked.get(n, 0.0), us) for n, us in by_name.items()) - annotated
    return {**shares, "unlinked": max(unlinked, 0.0) / device_total}


def _regions_of(e, main_threads: set[int]) -> set[str]:  # noqa: ANN001
    """The names of the host operation ``e`` and of every range around it; the backward's where the
    autograd engine's thread launched it."""
    regions = {"backward"} if e.thread not in main_threads else set()
    node = e
    while node is not None:
        regions.add(node.name)
        node = node.cpu_parent
    return regions


def _annotated_regions(events: list, cpu_events: list, main_threads: set[int]) -> list[tuple[float, float, set[str]]]:
    """The spans the host's ranges draw on the device timeline (user annotations: from the first kernel
    launched inside the range to its last), each with the regions of its range (:func:`_regions_of`).

    The step's own range is left out: its span holds every kernel of the step, whoever launched it.
    """
    hosts: dict[str, object] = {}
    for e in cpu_events:
        hosts.setdefault(e.name, e)
    return [
        (e.time_range.start, e.time_range.start + e.time_range.elapsed_us(), _regions_of(hosts[e.name], main_threads))
        for e in events
        if e.device_type == DeviceType.CUDA
        and getattr(e, "is_user_annotation", False)
        and e.name != "train_step"
        and e.name in hosts
    ]


def _train_steps(trainer, steps: int) -> None:  # noqa: ANN001
    """The trainer's steps, split into labelled phases (the same work as ``Trainer.launch_step``). As in the
    training loop, with ``overlap_steps`` each step's loss is read once the next step is launched."""
    from muomni.training.in_flight import InFlight, LaunchedStep

    in_flight = InFlight(LaunchedStep.result, overlap=trainer.overlaps_steps)
    for _ in range(steps):
        with record_function("train_step"):
            with record_function("data"):
                batches = trainer.next_batches()
            in_flight.push(LaunchedStep(0, 0.0, _step(trainer, batches)))  # number and rate unused here
    in_flight.drain()


def _step(trainer, batches: list[torch.Tensor]) -> Callable[[], list[float]]:  # noqa: ANN001
    scaler = trainer.precision.scaler
    loss_sum = torch.zeros((), device=trainer.device)
    for tokens in batches:
        with trainer.precision.ctx:
            with record_function("forward"):
                sum_loss, _ = trainer.loss_fn(trainer.forward_model, tokens)
            loss = sum_loss / trainer.tokens_per_step
        with record_function("backward"):
            scaler.scale(loss).backward()
        loss_sum += loss.detach()
    with record_function("optimizer"):
        return trainer.update(loss_sum)  # the trainer's own: clipping, the step, and the read of the loss


def _print_tables(prof: profile, memory_prof: profile, cuda: bool, shares: dict[str, float | None]) -> None:
    sort = "self_cuda_time_total" if cuda else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=sort, row_limit=15))
    mem_sort = "self_cuda_memory_usage" if cuda else "self_cpu_memory_usage"
    print(memory_prof.key_averages().table(sort_by=mem_sort, row_limit=10))
    parts = [f"{k} {'n/a' if v is None else f'{100 * v:.1f}%'}" for k, v in shares.items()]
    of = "the device's kernel time" if cuda else "step time"
    print(f"share of {of}: " + ", ".join(parts))
    print("(attention and mlp: forward only, backward holds both directions' gradients; n/a: inside a compiled graph)")
    if "unlinked" in shares:
        print("(unlinked: kernels the profiler links to no host operation, so to none of the parts above)")


# What run_profile writes in --out (``run``: the profiled steps' run folder; ``profile.json``: what was
# profiled, written first); a folder of these only, with a profile.json of its own, may be profiled into again.
MARKER = "profile.json"
PROFILE_FILES = frozenset(
    {MARKER, "trace_train.json", "memory_timeline.json", "trace_decode.json", "trace_decode_compiled.json", "run"}
)


def wrote_profile(out: Path) -> bool:
    """Whether ``out`` holds a profile muomni wrote: its profile.json, of the form :func:`_write_marker`
    writes. The traces carry nothing of muomni's own: any torch.profiler trace reads the same."""
    data = json_object(out / MARKER)
    return data is not None and data.get("kind") == "profile" and isinstance(data.get("config"), dict)


def _write_marker(out: Path, args: argparse.Namespace, cfg: Config) -> None:
    """profile.json: the options and the resolved config profiled (saved with every benchmark), and the mark
    by which a later profile knows the folder as its own."""
    summary = {"kind": "profile", "steps": args.steps, "infer": args.infer, "config": cfg.to_dict()}
    (out / MARKER).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")


def _profile_config(args: argparse.Namespace, out: Path) -> Config:
    """The config of the profiled steps: ``--config`` and the overrides, with the keys a profile sets itself
    replaced, and a warning for each of those the command line gave."""
    cfg = load_config(args.config, args.overrides)
    set_here = {
        "max_steps": f"is set by --steps here: 2 warm-up steps, then {args.steps} traced and {args.steps} for memory",
        "save_dir": f"is not used here: the profiled steps' run folder is {out / 'run'}",
        "resume": "is not used here: a profile always starts a new run",
        "val_freq": "is not used here: a profile runs no validation",
        "val_batches": "is not used here: a profile runs no validation",
        "checkpoint_freq": "is not used here: a profile writes no checkpoints",
        "keep_checkpoints": "is not used here: a profile writes no checkpoints",
    }
    if cfg.warmup_steps > 1:
        set_here["warmup_steps"] = "is set to 1 here: a longer warmup would outlast the profile's few steps"
    warn_set_here(args.overrides, set_here)
    # The schedule does not matter to a profile; the preset's warmup would outlast these few steps and warn.
    return cfg.replace(
        save_dir=str(out / "run"), resume="never", max_steps=2 * args.steps + 2, warmup_steps=min(cfg.warmup_steps, 1)
    )


def run_profile(args: argparse.Namespace) -> int:
    from muomni.training.trainer import Trainer

    check_steps(args.steps)
    out = Path(args.out)
    check_out_folder(out, PROFILE_FILES, wrote_profile)
    cfg = _profile_config(args, out)  # before the folder is made: a bad key leaves none behind
    with _removed_unless_traced(out):
        _write_marker(out, args, cfg)
        trainer = Trainer(cfg)
        _profile_training(trainer, args, out)
    if args.infer:
        _profile_decoding(trainer, out, activities_of(trainer.device))
    print(f"trace: {out / 'trace_train.json'} (open at ui.perfetto.dev)")
    return 0


@contextmanager
def _removed_unless_traced(out: Path) -> Iterator[None]:
    """Make ``out``; if this command made it and stops (an error, Ctrl-C) before the training trace is
    written, remove it again: a folder holding a marker and half a run folder is of no use, and was left."""
    made = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        yield
    except BaseException:
        if made and not (out / "trace_train.json").exists():
            shutil.rmtree(out, ignore_errors=True)
        raise


def activities_of(device: torch.device) -> list[ProfilerActivity]:
    return [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])


def _profile_training(trainer, args: argparse.Namespace, out: Path) -> None:  # noqa: ANN001
    """Warm up, then the two profiled passes of training steps: the trace, the tables and the breakdown."""
    cuda = trainer.device.type == "cuda"
    _train_steps(trainer, 2)  # warm-up: compilation and allocator growth stay out of the trace
    activities = activities_of(trainer.device)
    # Two passes. Recording every operation's shapes, Python stack and allocations costs the host time per
    # operation, and where the host keeps the GPU fed (CUDA graphs, overlapped steps) that shows up as idle
    # device time that the run without the profiler does not have. So the trace, the time tables and the
    # device breakdown come from a pass that records the operations only; the memory table and timeline
    # from a second pass that records the rest.
    with labelled(trainer.model), profile(activities=activities) as prof:
        _train_steps(trainer, args.steps)
        if cuda:
            torch.cuda.synchronize()
    # The first pass is written out and read before the second starts: exported after it, on an H200, the
    # trace had every kernel at zero duration.
    prof.export_chrome_trace(str(out / "trace_train.json"))
    events = prof.events()
    with profile(activities=activities, record_shapes=True, profile_memory=True, with_stack=True) as memory_prof:
        _train_steps(trainer, args.steps)
        if cuda:
            torch.cuda.synchronize()
    _memory_timeline(memory_prof, out, trainer.device)
    _print_tables(prof, memory_prof, cuda, _shares(events, cuda))
    if cuda:
        kernels = device_kernels(events)
        print("\n".join(top_kernels(kernels, args.steps)))
        print_breakdown(device_breakdown(kernels, args.steps))


def _memory_timeline(prof: profile, out: Path, device: torch.device) -> None:
    if device.type == "cuda" and device.index is None:
        # The timeline keeps the allocations whose device equals this one: "cuda" matches none of "cuda:0"'s.
        device = torch.device("cuda", torch.cuda.current_device())
    try:
        with warnings.catch_warnings():
            # Newer PyTorch deprecates it, warning on every call, for CUDA allocator snapshots, which do not
            # cover the CPU; while it works it is the timeline muomni writes, so only that warning is silenced.
            warnings.filterwarnings("ignore", message="`export_memory_timeline` is deprecated", category=FutureWarning)
            prof.export_memory_timeline(str(out / "memory_timeline.json"), device=str(device))
    except Exception as e:  # the timeline is experimental in PyTorch and missing from some builds
        print(f"memory timeline not written: {type(e).__name__}: {str(e)[:120]}")


def _profile_decoding(trainer, out: Path, activities: list) -> None:  # noqa: ANN001
    from muomni.inference.generate import generate_tokens

    model = trainer.model.eval()
    model.enable_kv_cache(True)
    prompt = [[3] * 16]
    generate_tokens(model, prompt, 32, temperature=0.0)  # warm-up
    with profile(activities=activities, record_shapes=True) as prof:
        generate_tokens(model, prompt, 32, temperature=0.0)
    prof.export_chrome_trace(str(out / "trace_decode.json"))
    cuda = ProfilerActivity.CUDA in activities
    sort = "self_cuda_time_total" if cuda else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=sort, row_limit=15))
    print(f"decode trace: {out / 'trace_decode.json'}")
    if cuda:
        try:
            _profile_compiled_decoding(model, prompt, out, activities)
        except Exception as e:  # an extra pass: the tables above stand without it
            print(f"compiled decoding not profiled: {type(e).__name__}: {str(e)[:160]}")


def _profile_compiled_decoding(model, prompt: list[list[int]], out: Path, activities: list) -> None:  # noqa: ANN001
    """The fast path too (``generate --compile``; on a GPU, CUDA graphs of muomni's decode kernels), with
    what each kernel adds to a token's device time (see :func:`critical_path`)."""
    from muomni.inference.generate import generate_tokens

    new = min(DECODE_TOKENS, model.config.ctx_len - len(prompt[0]))
    generate_tokens(model, prompt, new, temperature=0.0, compile=True)  # compiles, captures the graphs
    with profile(activities=activities) as prof:
        generate_tokens(model, prompt, new, temperature=0.0, compile=True)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
    prof.export_chrome_trace(str(out / "trace_decode_compiled.json"))
    print(f"compiled decoding of {new} tokens, per token (the prompt's and the host's share included):")
    print("\n".join(critical_path_lines(device_kernels(prof.events()), new)))
    print(f"compiled decode trace: {out / 'trace_decode_compiled.json'}")
