"""The +all row with the residual stream in the autocast dtype (the embedding's output cast to bf16, so the
residual adds stay bf16) against the code as it is (fp32 residual under autocast): an upper bound of what a
bf16 residual stream buys, and its quality. argv: variant (fp32res|bf16res) preset out.json"""

import sys

import torch
from plus_all_row import run

variant, preset, out = sys.argv[1:4]
if variant == "bf16res":
    embedding_forward = torch.nn.Embedding.forward

    def forward(self, tokens):
        out = embedding_forward(self, tokens)
        if torch.is_autocast_enabled("cuda"):
            out = out.to(torch.get_autocast_dtype("cuda"))
        return out

    torch.nn.Embedding.forward = forward
run(variant, out, preset)
