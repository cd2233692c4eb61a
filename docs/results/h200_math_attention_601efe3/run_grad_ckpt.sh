# The +grad_ckpt row beside Hugging Face's on one start (601efe3's tree).
source docs/results/h200_package_ab_fcc038a/common.sh
R=/tmp/r9; mkdir -p $R
date -u > $R/date.txt
step small_ckpt_vs_hf 160 python3 -m muomni bench train --config small --rows +grad_ckpt --vs-hf --out $R/small_ckpt_vs_hf
finish call5
grep -E "^\| " $R/small_ckpt_vs_hf/results.md
