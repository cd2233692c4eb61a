#!/bin/bash
# CPU A/B of two commits' code: the same venv, alternating processes, nothing else running.
set -u
PY=/work/main/.venv/bin/python
run() {  # run LABEL TREE KIND I
  local label=$1 tree=$2 kind=$3 i=$4
  if [ $kind = train ]; then
    args=(bench train --config default --steps 8 --rows baseline,+all)
  else
    args=(bench infer --config debug --rows "KV cache,KV cache + compile")
  fi
  ( cd $tree && MUOMNI_CACHE=/tmp/ab/cache_$label PYTHONPATH=$tree $PY -m muomni "${args[@]}" --out /tmp/ab/${kind}_${label}_$i > /tmp/ab/${kind}_${label}_$i.log 2>&1 )
  echo "$kind $label $i rc=$? $(date -u +%H:%M:%S)"
}
for i in 1 2 3; do
  for label in old new; do
    tree=/tmp/wt_old; [ $label = new ] && tree=/work/main
    run $label $tree train $i
  done
done
for i in 1 2 3; do
  for label in new old; do
    tree=/tmp/wt_old; [ $label = new ] && tree=/work/main
    run $label $tree infer $i
  done
done
