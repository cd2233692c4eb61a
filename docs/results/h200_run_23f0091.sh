#!/usr/bin/env bash
source docs/results/h200_package_ab_fcc038a/common.sh
rm -rf $R/*
python3 -c "import torch, triton, transformers; print(torch.__version__, triton.__version__, transformers.__version__, torch.cuda.get_device_name())" > $R/versions.txt 2>&1
date -u > $R/date.txt
nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv > $R/gpu_before.txt 2>&1
step train_tiny 320 python3 -m muomni bench train --config tiny --vs-hf --out $R/train-tiny
step gpu_tests 225 python3 -m pytest -q -n 4 -p no:cacheprovider -p no:benchmark -o addopts="--import-mode=importlib" \
  tests/distributed/test_distributed.py tests/inference/test_inference_compile.py tests/inference/test_inference_cuda.py \
  tests/inference/test_inference_loading.py tests/inference/test_triton_top_p.py tests/models tests/test_cli_train.py \
  tests/training/test_chunked_ce.py tests/training/test_compiled_training.py tests/training/test_master_weights.py \
  tests/training/test_trainer.py
pkill -f pytest; finish s45b
