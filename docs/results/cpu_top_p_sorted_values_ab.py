"""Eager top-p on a CPU: numpy's sort of the values against torch's sort with ids, alternating in one process.

The bench's eager rows with top-p 0.9 (temperature 0.8), twice each way, then temperature 0.8 alone;
prints tokens/s in total and ms a step, and writes the rows as JSON lines to OUT.

    PYTHONPATH=. python docs/results/cpu_top_p_sorted_values_ab.py PRESET NEW_TOKENS OUT
"""

import json
import sys

import torch

from muomni.bench.infer import SAMPLED, TOP_P, _row
from muomni.config import load_config
from muomni.inference import sampling
from muomni.models.thinker import Thinker

preset, new, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
torch.manual_seed(0)
model = Thinker(load_config(preset)).eval()
WAYS = {"sorted_values": sampling._top_p_by_sorted_values, "torch_sort": sampling._top_p}

with open(out, "w") as f:
    for batch in (1, 16):
        for repeat in range(2):
            for way, rule in WAYS.items():
                sampling._top_p_by_sorted_values = rule  # what eager top-p on a CPU calls
                row = _row(model, f"{preset} b{batch} eager top-p {way}", batch, new, sampling=TOP_P)
                print(way, batch, round(row["tokens_per_s_total"]), round(row["ms_per_step"], 3), flush=True)
                f.write(json.dumps({"way": way, "repeat": repeat, **row}) + "\n")
        row = _row(model, f"{preset} b{batch} eager T0.8", batch, new, sampling=SAMPLED)
        print("T0.8 alone", batch, round(row["tokens_per_s_total"]), round(row["ms_per_step"], 3), flush=True)
        f.write(json.dumps({"way": "temperature alone", "repeat": 0, **row}) + "\n")
    f.write(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads()}) + "\n")
