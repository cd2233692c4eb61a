"""Small +all training row through the bench's row worker, one variant per process.

argv: VARIANT out.json. "base": the row as the bench runs it; "gqa": SDPA given the grouped key/value heads
as they are (``enable_gqa``) instead of copies per query head, whatever the dtype and device (since then
the model does this where the fused kernels take it); "maxauto": ``compile_mode=max-autotune`` in place
of the row's reduce-overhead.
"""

import sys

import torch.nn.functional as F
from plus_all_row import run

import muomni.models.layers as layers

variant, out = sys.argv[1], sys.argv[2]
if variant == "gqa":
    plain = layers.sdpa_attention

    def sdpa_gqa(q, k, v, mask, dropout_p):  # noqa: ANN001, ANN202
        if mask is not None:
            return plain(q, k, v, mask, dropout_p)
        groups = q.shape[1] != k.shape[1]
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True, enable_gqa=groups)

    layers.sdpa_attention = sdpa_gqa  # read by each Attention module when it is built


def max_autotune(spec: dict) -> None:
    spec["config"]["compile_mode"] = "max-autotune"


run(variant, out, adjust=max_autotune if variant == "maxauto" else None)
