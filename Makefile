# One-command set-up: `make run` and `make test` create .venv on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test bench clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	# llama-cpp-python compiles llama.cpp once (about 10 minutes on 2 cores); pip caches the wheel.
	$(PY) -m pip install -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/assistant

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(VENV)/bin/assistant bench

clean:
	rm -rf $(VENV)
