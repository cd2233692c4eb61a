#!/usr/bin/env bash
# Two calls on one machine start: run1 (tests, small training table), then run2 (decoding tables).
source docs/results/h200_package_ab_fcc038a/common.sh
rm -rf $R/*
python3 -c "import torch, triton, transformers; print(torch.__version__, triton.__version__, transformers.__version__, torch.cuda.get_device_name())" > $R/versions.txt 2>&1
nvidia-smi --query-gpu=driver_version,name --format=csv >> $R/versions.txt 2>&1
date -u > $R/date.txt
step gpu_tests 200 python3 -m pytest -q -p no:cacheprovider -o addopts="--import-mode=importlib" \
  tests/training/test_memory.py tests/training/test_checkpoint_files.py tests/training/test_optim.py \
  tests/training/test_run_folder.py tests/training/test_setup.py tests/bench/test_bench_bad_input.py tests/bench/test_out_checks.py \
  tests/inference/test_inference_cuda.py tests/test_cli_usage.py
step train_small 370 python3 -m muomni bench train --config small --out $R/train-small
finish s44a
source docs/results/h200_package_ab_fcc038a/common.sh
rm -rf $R/*
date -u > $R/date.txt
step infer_tiny 200 python3 -m muomni bench infer --config tiny --vs-hf --out $R/infer-tiny
step infer_small 250 python3 -m muomni bench infer --config small --vs-hf --out $R/infer-small
finish s44b
