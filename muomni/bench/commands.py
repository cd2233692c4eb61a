"""``muomni bench train|infer``: argument handling around :mod:`muomni.bench.train` and ``.infer``."""

from __future__ import annotations

import argparse


def run_bench(args: argparse.Namespace) -> int:
    if args.what == "train":
        from muomni.bench.train import bench_train

        bench_train(args.config, args.overrides, args.steps, args.out, args.vs_hf, args.rows)
        return 0
    from muomni.bench.infer import bench_infer

    bench_infer(args)
    return 0
