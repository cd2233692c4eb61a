"""Sampled decoding on a CPU: the exponential race against the inverse CDF, alternating in one process.

The race draws an exponential a token (torch draws those on a CPU one at a time, in double precision);
the inverse CDF draws one uniform a row. Each case runs twice each way, alternating (a fresh compile
each time, excluded from the timing as in the bench); prints tokens/s in total and ms a step, and
writes the rows as JSON lines to OUT.

    PYTHONPATH=. python docs/results/cpu_sampling_noise_ab.py PRESET NEW_TOKENS OUT
"""

import json
import sys

import torch

from muomni.bench.infer import GREEDY, SAMPLED, TOP_P, _row
from muomni.config import load_config
from muomni.inference import decode, sampling
from muomni.models.thinker import Thinker

preset, new, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
torch.manual_seed(0)
model = Thinker(load_config(preset)).eval()
CASES = [  # (name, batch, compiled, sampling)
    ("b1 compiled T0.8", 1, True, SAMPLED),
    ("b1 compiled top-p 0.9", 1, True, TOP_P),
    ("b16 compiled T0.8", 16, True, SAMPLED),
    ("b1 eager T0.8", 1, False, SAMPLED),
]
WAYS = {"race": sampling.race_noise, "inverse_cdf": sampling.row_uniforms}


def run(label: str, batch: int, compiled: bool, params: sampling.SamplingParams) -> dict:
    model.__dict__.pop("_muomni_compiled_decode", None)
    torch._dynamo.reset()
    row = _row(model, f"{preset} {label}", batch, new, compile=compiled, sampling=params)
    print(label, round(row["tokens_per_s_total"]), round(row["ms_per_step"], 3), flush=True)
    return row


with open(out, "w") as f:
    for name, batch, compiled, params in CASES:
        for repeat in range(2):
            for way, draw in WAYS.items():
                decode.draw_noise = draw  # what DecodeSetup.noise draws
                row = run(f"{name} {way}", batch, compiled, params)
                f.write(json.dumps({"case": name, "way": way, "repeat": repeat, **row}) + "\n")
        if compiled:
            row = run(f"{name} greedy", batch, compiled, GREEDY)
            f.write(json.dumps({"case": name, "way": "greedy", "repeat": 0, **row}) + "\n")
    f.write(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads()}) + "\n")
