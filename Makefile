# One-command set-up: `make run` and `make test` create .venv on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Extra pip options, e.g. PIP_ARGS="--extra-index-url https://download.pytorch.org/whl/cpu" for
# PyTorch's CPU-only wheel where the package index would otherwise give its larger CUDA build.
PIP_ARGS ?=

.PHONY: run test bench clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	# llama-cpp-python compiles llama.cpp once (about 10 minutes on 2 cores); pip caches the wheel.
	$(PY) -m pip install $(PIP_ARGS) -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/assistant

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(VENV)/bin/assistant bench

clean:
	rm -rf $(VENV)
