# Sourced by each call: environment, a results folder, and a function that runs one step under a time limit.
set -o pipefail
export PYTHONPATH=$PWD MUOMNI_CACHE=/tmp/mc PYTHONUNBUFFERED=1
R=/tmp/r; mkdir -p $R
step() {  # step NAME LIMIT_S COMMAND...: run it, its output in $R/NAME.log, its rc and wall time in $R/steps.txt
  local name=$1 limit=$2; shift 2
  local t0=$(date +%s)
  timeout $limit "$@" > $R/$name.log 2>&1
  local rc=$?
  echo "$name rc=$rc wall_s=$(( $(date +%s) - t0 )) $(date -u +%H:%M:%S)" | tee -a $R/steps.txt
}
finish() { tar czf $OUT/$1.tgz -C $R . ; cat $R/steps.txt; }
