# A/B, each variant run from its own folder: reentrant (head) against non-reentrant checkpointing, and the
# eager math attention with and without the patch.
source docs/results/h200_package_ab_fcc038a/common.sh
source docs/results/h200_package_ab_fcc038a/variants.sh
R=/tmp/r7; mkdir -p $R
date -u > $R/date.txt
ab() {  # ab NAME VARIANT LIMIT ARGS...: muomni from /tmp/ab/VARIANT, run there
  local name=$1 v=$2 limit=$3; shift 3
  (cd /tmp/ab/$v && PYTHONPATH=/tmp/ab/$v python3 -c "import muomni, sys; print(muomni.__file__)" > $R/$name.which && \
   PYTHONPATH=/tmp/ab/$v step $name $limit python3 -m muomni bench train "$@" --out $R/$name)
}
for i in 1 2; do
  ab ckpt_tiny_new_$i head 120 --config tiny --rows +grad_ckpt
  ab ckpt_tiny_old_$i ckpt_nonreentrant 120 --config tiny --rows +grad_ckpt
done
for i in 1 2; do
  ab ckpt_small_new_$i head 150 --config small --rows +grad_ckpt
  ab ckpt_small_old_$i ckpt_nonreentrant 150 --config small --rows +grad_ckpt
done
ab attn_small_old head 150 --config small --rows +fp16
ab attn_small_new attn_patched 150 --config small --rows +fp16
finish call3
cat $R/*.which | sort | uniq -c
for d in $(ls -d $R/*/ | xargs -n1 basename); do echo "== $d"; grep -E "^\| \+" $R/$d/results.md; done
