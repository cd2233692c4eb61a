# Build package variants under /tmp/ab/NAME/muomni, each run with NAME as its working directory (python -m puts
# the working directory ahead of PYTHONPATH, so a copy run from the checkout's root would import the checkout).
set -e
ROOT=$PWD
rm -rf /tmp/ab && mkdir -p /tmp/ab
for v in head ckpt_nonreentrant attn_patched; do mkdir -p /tmp/ab/$v && cp -r $ROOT/muomni /tmp/ab/$v/; done
sed -i 's/checkpoint_blocks(self.model, reentrant=not self.cfg.use_compile and not self.env.enabled)/checkpoint_blocks(self.model, reentrant=False)/' /tmp/ab/ckpt_nonreentrant/muomni/training/trainer.py
grep -q "reentrant=False)" /tmp/ab/ckpt_nonreentrant/muomni/training/trainer.py
(cd /tmp/ab/attn_patched && patch -p1 < $ROOT/docs/results/h200_package_ab_fcc038a/math_attention.patch)
set +e
