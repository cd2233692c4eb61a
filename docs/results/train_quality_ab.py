"""The small preset's +all row on bench train's schedule: per-step losses and the validation loss.

    PYTHONPATH=. python3 docs/results/train_quality_ab.py old|new OUT.json

3 warm-up + 20 steps with a learning-rate warmup of 2, as ``muomni bench train --steps 20`` runs the row;
``old`` reads the step's loss and norm on the host after the optimizer is queued (the loop before commit
7774f32), ``new`` copies them out before. One variant per process. ``PRESET`` in the environment picks
another preset (the small one by default).
"""

import json
import os
import sys
import tempfile

import torch

import muomni.training.trainer as tr
from muomni.bench.train import rows_for
from muomni.config import load_config
from muomni.training.runlog import RunLog

variant, out = sys.argv[1], sys.argv[2]
if variant == "old":
    tr.copy_to_host = lambda values: values.tolist  # read when called: after the update is queued
row = [r for r in rows_for(torch.device("cuda")) if r.name == "+all"][0]
tmp = tempfile.mkdtemp()
steps = {"max_steps": 23, "warmup_steps": 2, "val_freq": 10**6, "checkpoint_freq": 10**6}
cfg = load_config(os.environ.get("PRESET", "small")).replace(**row.keys)
cfg = cfg.replace(**steps, save_dir=tmp, resume="never")
t = tr.Trainer(cfg)
log = RunLog(t.save_dir, 0, cfg.max_steps, cfg.print_freq)
losses = []
for _ in range(23):
    loss, norm, lr, applied = t.fitted_step(t.next_batches(), log)
    t.progress.step += 1
    t.progress.applied_steps += int(applied)
    losses.append((loss, norm))
if torch.cuda.is_available():
    torch.cuda.synchronize()
val = t.evaluate()
with open(out, "w") as f:
    json.dump({"variant": variant, "losses": losses, "val": val}, f)
picked = [round(losses[i][0], 4) for i in (0, 4, 9, 14, 22)]
print(variant, "val", round(val, 4), "loss@1,5,10,15,23", picked, "norm@23", round(losses[22][1], 4), flush=True)
