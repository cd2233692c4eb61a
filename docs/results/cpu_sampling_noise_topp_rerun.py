"""The default job's compiled top-p row again, 112 new tokens, three alternations (see cpu_sampling_noise_ab.py).

PYTHONPATH=. python docs/results/cpu_sampling_noise_topp_rerun.py
"""

import torch

from muomni.bench.infer import TOP_P, _row
from muomni.config import load_config
from muomni.inference import decode, sampling
from muomni.models.thinker import Thinker

torch.manual_seed(0)
model = Thinker(load_config("default")).eval()
for _ in range(3):
    for way, draw in {"race": sampling.race_noise, "inverse_cdf": sampling.row_uniforms}.items():
        decode.draw_noise = draw
        model.__dict__.pop("_muomni_compiled_decode", None)
        torch._dynamo.reset()
        r = _row(model, way, 1, 128, compile=True, sampling=TOP_P)
        print(
            way,
            round(r["tokens_per_s_total"]),
            round(r["ms_per_step"], 3),
            [round(x) for x in r["all_runs_tokens_per_s"]],
            flush=True,
        )
