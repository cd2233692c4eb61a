"""End-to-end compiled decoding with the decode kernels of a saved copy (old) or of the tree (new).

argv: VARIANT CONFIG BATCHES_JSON. "old" loads the kernels from .devrun/td_old.py (``git show
d97aa49:muomni/models/triton_decode.py``, before the epilogue operands were loaded first) in place of
muomni.models.triton_decode and of the modules its attention and PDL choice have since moved to
(split_kv, decode_launch); run one variant per process, alternating. Prints one line "E2E {json}".
"""

import importlib.util
import json
import sys

import torch

variant, config, batches = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
if variant == "old":
    spec = importlib.util.spec_from_file_location("muomni.models.triton_decode", ".devrun/td_old.py")
    old = importlib.util.module_from_spec(spec)
    # The custom ops import their kernels from these, bench infer the PDL choice (the copy has none: no PDL).
    names = ("triton_decode", "split_kv", "decode_launch")
    for name in names:
        sys.modules[f"muomni.models.{name}"] = old
    spec.loader.exec_module(old)
    import muomni.models

    for name in names:
        setattr(muomni.models, name, old)

from muomni.bench.infer import _row  # noqa: E402
from muomni.config import load_config  # noqa: E402
from muomni.models import triton_decode as td  # noqa: E402
from muomni.models.thinker import Thinker  # noqa: E402

cfg = load_config(config)
torch.manual_seed(cfg.seed)
model = Thinker(cfg).cuda().eval().to(torch.bfloat16)
out = {"variant": variant, "config": config, "module": td.__file__}
for b in batches:
    r = _row(model, f"b{b}", b, 512, compile=True)
    out[f"b{b}"] = {k: r[k] for k in ("tokens_per_s_total", "ms_per_step", "all_runs_tokens_per_s")}
if "b1" in out and "b16" in out:
    out["ratio16"] = out["b16"]["tokens_per_s_total"] / out["b1"]["tokens_per_s_total"]
print("E2E " + json.dumps(out), flush=True)
