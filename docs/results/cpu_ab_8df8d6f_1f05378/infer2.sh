#!/bin/bash
PY=/work/main/.venv/bin/python
for i in 1 2 3 4 5 6; do
  for label in new old; do
    tree=/tmp/wt_old; [ $label = new ] && tree=/work/main
    ( cd $tree && MUOMNI_CACHE=/tmp/ab/cache_$label PYTHONPATH=$tree $PY -m muomni bench infer --config debug --steps 128 --rows "KV cache + compile" 2>&1 | grep -F "| KV cache + compile |" | sed "s/^/$label $i /" )
  done
done
