"""The race with and without the largest logit taken off first, alternating in one process (GPU or CPU).

The race's token does not change when every logit moves alike, so from a temperature of 1e-4
(``sampling.RACE_UNSHIFTED_MIN_T``) it divides the logits as they are: one reduction over the row less a
step. "shifted" sets the threshold to infinity (the code before); "unshifted" is the package's. The bench's
compiled decode rows, temperature 0.8 (and top-p 0.9 for batch 1), twice each way; prints tokens/s in total
and writes the rows as JSON lines to OUT.

    PYTHONPATH=. python3 docs/results/race_shift_ab.py OUT
"""

import argparse
import json
import sys

import torch

from muomni.bench.infer import SAMPLED, TOP_P, _model, _row
from muomni.inference import sampling

CASES = [("tiny", 1, SAMPLED), ("tiny", 16, SAMPLED), ("tiny", 1, TOP_P), ("small", 1, SAMPLED)]
WAYS = {"unshifted": sampling.RACE_UNSHIFTED_MIN_T, "shifted": float("inf")}

with open(sys.argv[1], "w") as f:
    for preset, batch, params in CASES:
        model = _model(argparse.Namespace(ckpt=None, config=preset, overrides=[]))
        for repeat in range(2):
            for way, threshold in WAYS.items():
                sampling.RACE_UNSHIFTED_MIN_T = threshold
                model.__dict__.pop("_muomni_compiled_decode", None)
                torch._dynamo.reset()
                name = f"{preset} b{batch} top-p {params.top_p} {way}"
                row = _row(model, name, batch, 496, compile=True, sampling=params)
                print(name, round(row["tokens_per_s_total"]), round(row["ms_per_step"], 4), flush=True)
                f.write(json.dumps({"way": way, "repeat": repeat, "preset": preset, **row}) + "\n")
    f.write(json.dumps({"torch": torch.__version__}) + "\n")
