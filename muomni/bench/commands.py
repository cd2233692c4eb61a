"""``muomni bench train|infer``: argument handling around :mod:`muomni.bench.train` and ``.infer``."""

from __future__ import annotations

import argparse

from muomni.bench.options import bench_out_folder, check_out_folder, check_steps
from muomni.bench.report import RESULT_FILES, wrote_results
from muomni.bench.selection import named_rows
from muomni.errors import ConfigError


def run_bench(args: argparse.Namespace) -> int:
    _check_options(args)
    if args.what == "train":
        from muomni.bench.train import bench_train

        bench_train(args.config, args.overrides, args.steps, args.out, args.vs_hf, args.rows)
        return 0
    from muomni.bench.infer import bench_infer

    bench_infer(args)
    return 0


def _check_options(args: argparse.Namespace) -> None:
    """What the options alone can get wrong, before a model is built or a row measured. (Row names are
    checked against the rows of the device once it is known, still before the first row.)"""
    if args.what == "train" and args.ckpt is not None:  # it was ignored without a word
        raise ConfigError("--ckpt is for bench infer; bench train measures a fresh model of --config")
    check_steps(args.steps)
    named_rows(args.rows)
    check_out_folder(bench_out_folder(args.what, args.out), RESULT_FILES, wrote_results)
