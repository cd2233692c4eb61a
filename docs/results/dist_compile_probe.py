"""The bf16-weights compiled DDP test's two runs, timed, each rank's stderr streamed to a file; a run still
going after LIMIT seconds gets SIGABRT on every process under it, so that faulthandler prints their stacks."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, "tests/training")
import contextlib

from training_helpers import overrides, tiny_settings, write_corpus

out = Path(sys.argv[1])
limit = float(sys.argv[2])
out.mkdir(parents=True, exist_ok=True)
work = Path("/tmp/dp")
work.mkdir(exist_ok=True)
write_corpus(work / "corpus.txt")
bf16 = {"use_amp": True, "amp_dtype": "bf16", "weight_dtype": "bf16", "use_compile": True}


def port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def descendants(pid):
    kids = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return [int(k) for k in kids] + [d for k in kids for d in descendants(int(k))]


report = {}
for name, procs, keys in (
    ("single", 1, {"gradient_accumulation_steps": 2}),
    ("ddp", 2, {"distributed": "ddp", "gradient_accumulation_steps": 1}),
):
    s = tiny_settings(work / "corpus.txt", work / name, dropout=0.0, batch_size=2, max_steps=4, **bf16, **keys)
    env = {**os.environ, "MUOMNI_CACHE": str(work / "cache"), "OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1"}
    launcher = [sys.executable] + (
        ["-m", "torch.distributed.run", "--nproc_per_node", str(procs), "--master_port", str(port())]
        if procs > 1
        else []
    )
    t0 = time.time()
    with open(out / f"{name}.log", "w") as log:
        p = subprocess.Popen(
            [*launcher, "-m", "muomni", "train", *overrides(s)], env=env, stdout=log, stderr=subprocess.STDOUT
        )
        while p.poll() is None and time.time() - t0 < limit:
            time.sleep(1)
            if int(time.time() - t0) % 30 == 0:
                ps = subprocess.run(
                    ["ps", "-o", "pid,ppid,pcpu,etime,args", "--ppid", str(p.pid)]
                    + sum([["--ppid", str(d)] for d in descendants(p.pid)], []),
                    capture_output=True,
                    text=True,
                ).stdout
                with open(out / f"{name}.ps", "a") as f:
                    f.write(f"--- {time.time() - t0:.0f}s\n{ps}\n")
                time.sleep(1)
        if p.poll() is None:
            for d in descendants(p.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(d, signal.SIGABRT)
            time.sleep(10)
            p.kill()
    report[name] = {"rc": p.wait(), "seconds": round(time.time() - t0, 1)}
    print(name, report[name], flush=True)
(out / "report.json").write_text(json.dumps(report, indent=1))
