"""The Triton kernels of the compiled decode step on CUDA, by kind: split-KV attention (``attention``), the
row kernels of batch 1 (``rows``), the tensor-core tiles of 5 to 64 rows (``tiles``), the batched row kernels
of 2 to 4 rows (``batched``), and the PDL helpers they share (``pdl``). Which kernel serves which batch, their
launch parameters and what was measured to choose them: :mod:`muomni.models.triton_decode` (split-KV
attention's: :mod:`muomni.models.split_kv`; PDL or not: :mod:`muomni.models.decode_launch`).
"""
