"""Hugging Face interoperability: export to ``LlamaForCausalLM``, import Llama / Qwen2 folders.

Neither direction imports transformers: the folders are JSON + safetensors + ``tokenizer.json``.

    from muomni.hf import export_hf, load_hf
    export_hf("runs/default", "exported")          # muomni export --ckpt runs/default --out exported
    model, tokenizer = load_hf("hf:path/to/llama")  # a local folder; nothing is downloaded
"""

from muomni.hf.export import export_hf, run_export, save_hf
from muomni.hf.importer import HF_PREFIX, HFInit, load_for_training, load_hf

__all__ = ["HF_PREFIX", "HFInit", "export_hf", "load_for_training", "load_hf", "run_export", "save_hf"]
