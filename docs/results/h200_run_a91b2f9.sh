#!/usr/bin/env bash
source docs/results/h200_package_ab_fcc038a/common.sh
rm -rf $R/*
python3 -c "import torch, triton, transformers; print(torch.__version__, triton.__version__, transformers.__version__, torch.cuda.get_device_name())" > $R/versions.txt 2>&1
git log --oneline -1 > $R/head.txt 2>&1
step gpu_tests 230 python3 -m pytest -q -p no:cacheprovider -o addopts="--import-mode=importlib" \
  tests/training/test_memory.py tests/training/test_checkpoint_files.py tests/training/test_optim.py \
  tests/training/test_run_folder.py tests/training/test_setup.py tests/bench/test_bench_bad_input.py tests/bench/test_out_checks.py
step train_tiny 340 python3 -m muomni bench train --config tiny --vs-hf --out $R/train-tiny
finish s43
