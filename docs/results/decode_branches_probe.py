"""Batch rows decoded as independent branches of one CUDA graph, each branch on a stream of its own.

argv: CONFIG LAYOUTS_JSON (a list of layouts; a layout is a list of branch batch sizes, e.g. [[16], [8, 8]]).
Every branch is a model sharing the same weights with a KV cache of its own. Each layout decodes 496 tokens
after a 16-token prompt, 4 steps a graph (as generate does on CUDA), greedy; tokens/s in total over the
decode steps, median of 3 generations. The tokens of every layout are compared with those of the first.
"""

import json
import sys
import time

import torch

from muomni.bench.infer import GREEDY
from muomni.config import load_config
from muomni.inference.decode import DecodeSetup, _compiled
from muomni.models.thinker import Thinker

PROMPT, NEW, CHUNK = 16, 496, 4


def twin(model: Thinker) -> Thinker:
    """A model of ``model``'s shape whose parameters are ``model``'s own tensors (no weight bytes copied)."""
    device = model.lm_head.weight.device
    other = Thinker(model.config).to(device).eval().to(model.lm_head.weight.dtype)
    for name, mod in other.named_modules():
        src = model.get_submodule(name)
        for pname in list(mod._parameters):
            mod._parameters[pname] = src._parameters[pname]
    return other


class Branch:
    def __init__(self, model: Thinker, rows: torch.Tensor) -> None:
        b = rows.shape[0]
        self.model = model
        model.enable_kv_cache(True)
        model.setup_caches(b, model.config.ctx_len)
        model.set_key_padding(torch.ones(b, PROMPT, dtype=torch.bool, device="cuda"))
        with torch.inference_mode():
            logits = model(rows, torch.arange(PROMPT, device="cuda"))[:, -1]
        self.first = logits.argmax(-1)[:, None].clone()
        setup = DecodeSetup(model, GREEDY, 0, -1, None)
        t0 = time.perf_counter()
        self.fn = _compiled(setup, 1, False).fn
        self.token = self.first.clone()
        self.pos = torch.tensor([PROMPT], dtype=torch.long, device="cuda")
        self.done = torch.zeros(b, dtype=torch.bool, device="cuda")
        with torch.inference_mode(False):
            self.token, self.pos, self.done = self.token.clone(), self.pos.clone(), self.done.clone()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            self.fn(self.token, self.pos, self.done, None)
        torch.cuda.current_stream().wait_stream(side)
        torch.cuda.synchronize()
        self.compile_s = time.perf_counter() - t0

    def run(self) -> None:
        tok, done, out = self.token, self.done, []
        for i in range(CHUNK):
            tok, done = self.fn(tok, self.pos + i, done, None)
            out.append(tok)
        self.out = torch.cat(out, dim=1)


def layout_run(model: Thinker, prompts: torch.Tensor, sizes: list[int]) -> dict:
    models = [model] + [twin(model) for _ in sizes[1:]]
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    branches = [Branch(m, prompts[s : s + b]) for m, s, b in zip(models, starts, sizes)]
    streams = [None] + [torch.cuda.Stream() for _ in sizes[1:]]

    def run_all() -> None:
        cur = torch.cuda.current_stream()
        for br, s in zip(branches, streams):
            if s is None:
                br.run()
                continue
            s.wait_stream(cur)
            with torch.cuda.stream(s):
                br.run()
        for s in streams[1:]:
            cur.wait_stream(s)

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        run_all()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        run_all()

    def generate() -> tuple[float, torch.Tensor]:
        for br in branches:
            br.token.copy_(br.first)
            br.done.zero_()
        kept = []
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for step in range(NEW // CHUNK):
            for br in branches:
                br.pos.fill_(PROMPT + step * CHUNK)
            graph.replay()
            for br in branches:
                br.token.copy_(br.out[:, -1:])
            kept.append(torch.cat([br.out for br in branches]).clone())
        torch.cuda.synchronize()
        return time.perf_counter() - t0, torch.cat(kept, dim=1)

    generate()
    times, tokens = [], None
    for _ in range(3):
        t, tokens = generate()
        times.append(t)
    total = sum(sizes) * NEW
    return {
        "layout": sizes,
        "tokens_per_s_total": total / sorted(times)[1],
        "all_runs": [total / t for t in times],
        "ms_per_step": 1e3 * sorted(times)[1] / NEW,
        "compile_s": [round(br.compile_s, 1) for br in branches],
        "tokens": tokens,
    }


def main() -> None:
    cfg = load_config(sys.argv[1])
    torch.manual_seed(cfg.seed)
    model = Thinker(cfg).cuda().eval().to(torch.bfloat16)
    layouts = json.loads(sys.argv[2])
    biggest = max(sum(s) for s in layouts)
    prompts = torch.randint(0, cfg.vocab_size, (biggest, PROMPT), device="cuda")
    ref = None
    for sizes in layouts:
        r = layout_run(model, prompts[: sum(sizes)], sizes)
        tokens = r.pop("tokens")
        if ref is None or ref.shape != tokens.shape:
            ref = tokens
        r["tokens_equal_fraction"] = (tokens == ref).float().mean().item()
        r["config"] = sys.argv[1]
        print(json.dumps(r), flush=True)


if __name__ == "__main__":
    main()
