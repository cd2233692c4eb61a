"""Eager cached decoding on a CPU: the decode step's attention mask copied for each query head of a group
(``mask.repeat``) against broadcast as it is, alternating in one process.

Batch 1, temperature 0.8, 64 new tokens after a 16-token prompt, three rounds each way; prints decode
tokens/s and writes the rows as JSON lines to OUT.

    PYTHONPATH=. python docs/results/cpu_decode_mask_ab.py OUT
"""

import json
import sys

import torch
import torch.nn.functional as F

from muomni.config import load_config
from muomni.inference.generate import generate_tokens
from muomni.inference.stats import GenerationStats
from muomni.models import layers
from muomni.models.thinker import Thinker


def repeated_mask_attention(q, k, v, mask, dropout_p):  # noqa: ANN001, ANN201
    """sdpa_attention's cached path as it was: the mask always repeated for the groups."""
    if mask is None:
        return layers.sdpa_attention(q, k, v, mask, dropout_p)
    b, h, t, dh = q.shape
    groups = h // k.shape[1]
    q = q.reshape(b, k.shape[1], groups * t, dh)
    mask = mask.repeat(1, 1, groups, 1)
    y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
    return y.reshape(b, h, t, dh)


WAYS = {"broadcast": layers.sdpa_attention, "repeated": repeated_mask_attention}
with open(sys.argv[1], "w") as f:
    for preset in ("default", "tiny"):
        torch.manual_seed(0)
        cfg = load_config(preset)
        model = Thinker(cfg).eval()
        model.enable_kv_cache(True)
        prompt = torch.randint(0, cfg.vocab_size, (16,)).tolist()
        for round_ in range(3):
            for way, attend in WAYS.items():
                for block in model.attentions:
                    block.attend = attend
                generate_tokens(model, [prompt[:8]], 8, temperature=0.8, seed=0)  # warm
                stats = GenerationStats()
                tokens = generate_tokens(model, [prompt], 64, temperature=0.8, seed=round_, stats=stats)
                row = {"preset": preset, "way": way, "round": round_, "decode_tokens_per_s": stats.decode_tokens_per_s}
                print(row, flush=True)
                f.write(json.dumps({**row, "tokens": tokens}) + "\n")
    f.write(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads()}) + "\n")
