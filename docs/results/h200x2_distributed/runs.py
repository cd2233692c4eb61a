"""torchrun with 2 GPU processes (NCCL) against one GPU process with the global batch: the tiny model of
tests/distributed, 4 steps, 2 x batch 2 against 1 x batch 4, dropout off. Prints the relative error of the
worst weight tensor. The runs of results.json were made one group at a time by scripts equal to this one
in what they ran (the same helpers, keys and comparisons). argv: group (see RUNS)"""

import sys
import time
from pathlib import Path

sys.path[:0] = ["tests/training", "tests/distributed", "."]

from test_distributed import _train  # noqa: E402
from training_helpers import final_weights, write_corpus  # noqa: E402

SGD = {"optimizer": "sgd", "lr": 0.05, "max_grad_norm": 0.0}
RUNS = {  # name: (processes, config keys); use_amp is on by default, so bf16 autocast on a GPU
    "bf16_adamw": {"single": (1, {}), "ddp": (2, {"distributed": "ddp"}), "fsdp": (2, {"distributed": "fsdp"})},
    "bf16_repeat_and_math": {
        "single": (1, {}),
        "single_again": (1, {}),
        "single_math": (1, {"use_flash": False}),
        "ddp_math": (2, {"distributed": "ddp", "use_flash": False}),
    },
    "bf16_sgd": {
        "single": (1, SGD),
        "ddp": (2, {**SGD, "distributed": "ddp"}),
        "fsdp": (2, {**SGD, "distributed": "fsdp"}),
    },
    "fp32_sgd": {"single": (1, {**SGD, "use_amp": False}), "ddp": (2, {**SGD, "use_amp": False, "distributed": "ddp"})},
}
REFERENCE = {"single_again": "single", "single_math": "single", "ddp_math": "single_math"}


def main(group: str) -> None:
    root = Path("/tmp/dist_gpu") / group
    root.mkdir(parents=True, exist_ok=True)
    write_corpus(root / "corpus.txt")
    weights = {}
    for name, (procs, keys) in RUNS[group].items():
        started = time.time()
        result = _train(root, name, procs, timeout=150, device="cuda", **keys)
        print(name, "rc", result.returncode, f"{time.time() - started:.1f} s", flush=True)
        if result.returncode:
            print(result.stderr[-2000:])
            continue
        weights[name] = final_weights(root / name)
    for name in weights:
        reference = REFERENCE.get(name, "single")
        if name == reference or reference not in weights:
            continue
        want = weights[reference]
        errors = {k: ((weights[name][k] - want[k]).norm() / want[k].norm()).item() for k in want}
        worst = max(errors, key=errors.get)
        print(f"{name} against {reference}: {worst} {errors[worst]:.2e}")


if __name__ == "__main__":
    main(sys.argv[1])
