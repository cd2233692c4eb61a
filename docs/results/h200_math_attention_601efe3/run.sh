# After the math attention change: the +fp16 rows side by side with HF, the fp16 probe, the failing-rank test alone.
source docs/results/h200_package_ab_fcc038a/common.sh
R=/tmp/r8; mkdir -p $R
date -u > $R/date.txt
step probe 90 python3 docs/results/math_attention_half_probe.py $R/math_attention_half_probe.json
step small_vs_hf 200 python3 -m muomni bench train --config small --rows +fp16 --vs-hf --out $R/small_vs_hf
step tiny_vs_hf 120 python3 -m muomni bench train --config tiny --rows +fp16 --vs-hf --out $R/tiny_vs_hf
step failing_rank 170 python3 -m pytest -p no:cacheprovider -x -rfEs tests/distributed/test_distributed.py -k failing_rank
finish call4
cat $R/probe.log
for d in small_vs_hf tiny_vs_hf; do echo "== $d"; grep -E "^\| " $R/$d/results.md; done
tail -15 $R/failing_rank.log
