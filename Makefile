# The two set-up commands of the README. Each creates .venv when needed, installs muomni into it and runs.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# A CPU build of torch keeps the set-up small; any torch 2.5+ already installed is kept.
TORCH_SPEC ?= torch==2.13.0

.PHONY: run test lint clean

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

clean:
	rm -rf $(VENV) runs .pytest_cache
