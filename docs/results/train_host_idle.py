"""Small +all training, in one process: the bench's step with the host preparing the next batch after the
loss read (plain) or before it, while the GPU runs the update (prefetch); host times of each part. argv: out.json"""

import json
import statistics
import sys
import tempfile
import time

import torch

import muomni.training.trainer as T
from muomni.bench.train import rows_for
from muomni.config import load_config
from muomni.training.runlog import RunLog

out = sys.argv[1]
keys = dict([r for r in rows_for(torch.device("cuda")) if r.name == "+all"][0].keys)
cfg = load_config("small").replace(
    **keys,
    max_steps=400,
    warmup_steps=4,
    val_freq=10**6,
    checkpoint_freq=10**6,
    save_dir=tempfile.mkdtemp(),
    resume="never",
)
tr = T.Trainer(cfg)
log = RunLog(tr.save_dir, 0, cfg.max_steps, cfg.print_freq)
S = {"mode": "plain", "mark": False, "next": None}
H = {}


def rec(k, v):
    H.setdefault((S["mode"], S["mark"], k), []).append(v)


orig_copy = T.copy_to_host


def copy(values):
    read = orig_copy(values)

    def read2():
        if S["mode"] == "prefetch":
            t0 = time.perf_counter()
            S["next"] = tr.next_batches()
            rec("prefetch_ms", (time.perf_counter() - t0) * 1e3)
        t0 = time.perf_counter()
        r = read()
        S["t_ret"] = time.perf_counter()
        rec("wait_ms", (S["t_ret"] - t0) * 1e3)
        return r

    return read2


T.copy_to_host = copy
orig_loss = tr.loss_fn


def loss_fn(m, tokens):
    t0 = time.perf_counter()
    if "t_ret" in S:
        rec("wait_to_forward_ms", (t0 - S["t_ret"]) * 1e3)
    if S["mark"]:
        torch.compiler.cudagraph_mark_step_begin()
    r = orig_loss(m, tokens)
    rec("forward_call_ms", (time.perf_counter() - t0) * 1e3)
    return r


tr.loss_fn = loss_fn


def step():
    b = S["next"] if S["next"] is not None else tr.next_batches()
    S["next"] = None
    applied = tr.fitted_step(b, log)[3]
    tr.progress.step += 1
    tr.progress.applied_steps += int(applied)


def timed(n):
    marks = [torch.cuda.Event(enable_timing=True) for _ in range(n + 1)]
    marks[0].record()
    for m in marks[1:]:
        step()
        m.record()
    torch.cuda.synchronize()
    return [a.elapsed_time(b) for a, b in zip(marks, marks[1:])]


for _ in range(8):
    step()
torch.cuda.synchronize()
res = {"rounds": []}
for _round in range(2):
    for mode, mark in (("plain", False), ("prefetch", False), ("plain", True), ("prefetch", True)):
        S["mode"], S["mark"] = mode, mark
        S.pop("t_ret", None)
        H.clear()
        ts = timed(30)
        S["next"] = None if mode == "plain" else S["next"]
        row = {
            "mode": mode,
            "mark_step_begin": mark,
            "median_step_ms": statistics.median(ts),
            "step_ms": ts,
            **{k[2]: statistics.median(v) for k, v in H.items()},
        }
        res["rounds"].append(row)
        print(
            mode,
            "mark" if mark else "    ",
            " ".join(f"{k}={v:.3f}" for k, v in row.items() if isinstance(v, float)),
            flush=True,
        )
with open(out, "w") as f:
    json.dump(res, f, indent=1)
