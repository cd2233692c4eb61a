#!/bin/bash
# The target rows on the final code, one start: small training (baseline, +all), tiny and small decoding.
source docs/results/h200_package_ab_fcc038a/common.sh
rm -rf $R/*
{ date -u; nvidia-smi --query-gpu=driver_version,name --format=csv; python3 -c "import torch, triton, transformers, sys; print(sys.version.split()[0], torch.__version__, triton.__version__, transformers.__version__)"; } > $R/env.txt 2>&1
ROWS="no KV cache,KV cache + compile,batch 16 + compile"
step train_small 300 python3 -m muomni bench train --config small --rows baseline,+all --out $R/train-small
step infer_tiny 120 python3 -m muomni bench infer --config tiny --rows "$ROWS" --out $R/infer-tiny
step infer_small 140 python3 -m muomni bench infer --config small --rows "$ROWS" --out $R/infer-small
date -u >> $R/env.txt
finish final
for f in train_small infer_tiny infer_small; do grep -E "^\|" $R/$f.log; done
