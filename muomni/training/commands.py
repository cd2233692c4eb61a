"""``muomni train``: the command line around :class:`~muomni.training.trainer.Trainer`."""

from __future__ import annotations

import argparse
import gc

from muomni import distributed
from muomni.cli import signal_exit_code
from muomni.config import load_config, parse_override
from muomni.training.sources import refuse_shape_overrides
from muomni.training.trainer import Trainer


def run_train(args: argparse.Namespace) -> int:
    """``muomni train``: load the config (errors before any work), train, return the exit code."""
    cfg = load_config(args.config, args.overrides)
    refuse_shape_overrides(cfg, [parse_override(item)[0] for item in args.overrides])
    trainer = Trainer(cfg)
    ok = False
    try:
        trainer.fit()
        ok = True
    finally:
        # DDP's reducer holds the process group. Were it the last holder, the group would be destroyed from the
        # reducer's destructor, which holds the GIL while it joins gloo's worker thread, and that thread may be
        # waiting for the GIL to free the last collective's tensors: a hang at exit (seen under torchrun on
        # CPUs, in the stop-signal test). So the wrapper goes first, and the group is destroyed by
        # destroy_process_group, which releases the GIL.
        trainer.forward_model = None
        gc.collect()  # DDP's hooks hold the wrapper in reference cycles
        # Also after an error: leaving the group ends the peers' pending collectives instead of their timeout.
        distributed.teardown(trainer.env, ok)
    # A run stopped by a signal has its checkpoint but has not finished: not 0, so that `muomni train && muomni
    # export` goes no further and a scheduler or torchrun's restarts see a run to resume, not a finished one.
    return 0 if trainer.stop_signal is None else signal_exit_code(trainer.stop_signal)
