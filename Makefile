# ffbench: `make run` and `make test` install everything they need on first use.
# Tested with Python 3.11 and torch 2.13.0 (CPU build).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_VERSION := 2.13.0
# Where pip finds a CPU build of torch; e.g. TORCH_INDEX=https://download.pytorch.org/whl/cpu
# on a machine whose pip would otherwise fetch the (multi-GB) CUDA build.
TORCH_INDEX ?=
STAMP := $(VENV)/.installed-$(TORCH_VERSION)
STORE ?= $(CURDIR)/outputs/mlflow.db  # the store `make ui` opens
UI_PORT ?= 5000

.PHONY: install run test test-slow test-browser bench bench-memory lint format ui clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==$(TORCH_VERSION) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

run: install  ## FF on the bundled digits data set, recorded in outputs/mlflow.db
	$(BIN)/ffbench

test: install  ## the test suite (a few minutes on 2 CPU cores)
	$(BIN)/pytest

test-browser: install  ## headless Chromium (Debian's `chromium`) on the MLflow UI; screenshots in outputs/ui/
	$(BIN)/pytest -m slow -rs tests/test_ui.py

test-slow: install  ## long checks: real MNIST accuracy, e.g. FFBENCH_DATA=../shared/data/mnist
	$(BIN)/pytest -m slow -v

bench: install  ## training speed against matmul throughput (minutes), JSON in outputs/bench/
	$(BIN)/python benchmarks/speed.py

bench-memory: install  ## FF against BP / checkpointed BP in memory at depth 16, width 2000 (minutes)
	$(BIN)/python benchmarks/memory.py

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

ui: install  ## the MLflow UI on the local store, http://127.0.0.1:5000
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(STORE) --host 127.0.0.1 --port $(UI_PORT)

clean:
	rm -rf $(VENV) build *.egg-info
