# The two set-up commands of the README. Each creates .venv when needed, installs muomni into it and runs.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# A CPU build of torch keeps the set-up small; any torch 2.5+ already installed is kept.
TORCH_SPEC ?= torch==2.13.0

.PHONY: run test lint bench clean

$(VENV)/.ready: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[test]"
	touch $@

run: $(VENV)/.ready
	$(VENV)/bin/muomni train
	$(VENV)/bin/muomni generate --ckpt runs/default --prompt "def " --prompt "import " --max-new-tokens 64 --stats

test: $(VENV)/.ready
	$(VENV)/bin/ruff check muomni tests
	$(PY) -m pytest

lint: $(VENV)/.ready
	$(VENV)/bin/ruff check muomni tests
	$(VENV)/bin/ruff format --check muomni tests

# Every table of docs/BENCHMARKS.md, with the Python (and torch) of this machine rather than the CPU venv:
# on a GPU box, `make bench` after `pip install transformers matplotlib`. Results go to bench-out/.
BENCH := PYTHONPATH=. $(PYTHON) -m muomni
bench:
	$(BENCH) bench train --config tiny --vs-hf --out bench-out/train-tiny
	$(BENCH) bench train --config small --vs-hf --out bench-out/train-small
	$(BENCH) bench infer --config tiny --vs-hf --out bench-out/infer-tiny
	$(BENCH) bench infer --config small --vs-hf --out bench-out/infer-small
	$(BENCH) plan --config small --memory 12 --out bench-out/planned-small.json

clean:
	rm -rf $(VENV) runs bench-out .pytest_cache
