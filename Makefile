# `make demo` and `make test` install everything they need into .venv on first use.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.datafree-installed
TORCH  := torch==2.14.1 torchvision==0.29.1

# The offline copies of real datasets that sit beside the checkout (MNIST), when present.
ifneq ($(wildcard ../shared/data/mnist),)
export DATAFREE_DATA ?= $(abspath ../shared/data)
endif

.PHONY: demo test install clean-demo catalog

install: $(STAMP)

$(STAMP): setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip setuptools wheel
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e ".[test,slurm]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/datafree demo

# lint and format check (ruff.toml: the project's 120 columns), the import layers (.importlinter), the tests
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q tests

# after a change to a model, dataset, synthesizer or distiller: what `datafree list` and --print-config read
# without importing torch (datafree/catalog.py; tests/test_catalog.py fails until it is rewritten)
catalog: $(STAMP)
	$(BIN)/python -m datafree.catalog

# the demo's own output (results/demo is the committed record of our run: not touched)
clean-demo:
	rm -rf results/runs/demo
