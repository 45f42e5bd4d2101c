# ffbench: `make run` and `make test` install everything they need on first use.
# Tested with Python 3.11 and torch 2.13.0 (CPU build). `make help` lists the targets.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_VERSION := 2.13.0
# Where pip finds a CPU build of torch; e.g. TORCH_INDEX=https://download.pytorch.org/whl/cpu
# on a machine whose pip would otherwise fetch the (multi-GB) CUDA build.
TORCH_INDEX ?=
# The exact versions CI tested (`make lock` regenerates it); `make install CONSTRAINTS=`
# installs the newest versions pyproject.toml's ranges allow instead.
CONSTRAINTS ?= constraints.txt
PIN := $(if $(CONSTRAINTS),-c $(CONSTRAINTS))
STAMP := $(VENV)/.installed-$(TORCH_VERSION)
STORE ?= $(CURDIR)/outputs/mlflow.db  # the store `make ui` opens
UI_PORT ?= 5000

.DEFAULT_GOAL := install
.PHONY: help install lock run test test-unit test-app test-e2e test-slow test-browser test-faults \
	test-cluster cluster-up cluster-down bench bench-memory results docs lint format ui clean

help:  ## this list
	@grep -hE '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | \
		awk 'BEGIN {FS = ":.*## "}; {printf "  make %-13s %s\n", $$1, $$2}'

install: $(STAMP)  ## create .venv and install ffbench with the versions in constraints.txt

# torch comes first, from TORCH_INDEX if set (the constraints then apply in the second step,
# whose versions win: the torch index need not carry the pinned versions of torch's own deps).
$(STAMP): pyproject.toml $(CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==$(TORCH_VERSION) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX),$(PIN))
	$(BIN)/pip install -q -e '.[dev,server]' $(PIN)
	touch $@

lock:  ## reinstall .venv with the newest versions pyproject.toml allows and pin them in constraints.txt
	rm -rf $(VENV)
	$(MAKE) install CONSTRAINTS=
	{ echo "# Exact versions for \`make install\` (pip -c), so that a fresh clone gets what CI tests."; \
	  echo "# Regenerate: \`make lock\` (a fresh .venv with the newest versions pyproject.toml allows,"; \
	  echo "# then pip freeze --exclude-editable), run \`make test\`, commit. Written on $$($(BIN)/python -c 'import platform as p; print("Python", p.python_version(), p.system(), p.machine())');"; \
	  echo "# where a pinned version has no build for your platform: make install CONSTRAINTS="; \
	  $(BIN)/pip freeze --exclude-editable | sed -E 's/^(torch==[^+]+)\+.*/\1/'; \
	} > constraints.txt
	touch $(STAMP)

run: install  ## FF on the bundled digits data set, recorded in outputs/mlflow.db
	$(BIN)/ffbench

# The three tiers of docs/testing.md in one pytest run on TEST_WORKERS processes (pytest-xdist;
# 0: in this one). Tests go to the workers one by one as they free up, those of a file marked
# xdist_group together (its tests share a sweep); tests/e2e first, as its tests are the longest.
TEST_WORKERS ?= 2
XDIST := -n $(TEST_WORKERS) --dist loadgroup
test: install  ## unit, app and end-to-end tests on 2 workers (docs/testing.md: their times on 2 CPU cores)
	$(BIN)/pytest $(XDIST) tests/e2e tests/app tests/unit

test-unit: install  ## the pieces, in the test process
	$(BIN)/pytest $(XDIST) tests/unit

test-app: install  ## whole jobs and sweeps of the ffbench app, in the test process
	$(BIN)/pytest $(XDIST) tests/app

test-e2e: install  ## the installed commands in processes: signals, launchers, MLflow servers, make ui
	$(BIN)/pytest $(XDIST) tests/e2e

test-browser: install  ## headless Chromium (Debian's `chromium`) on the MLflow UI; screenshots in outputs/ui/
	$(BIN)/pytest -m slow -rs tests/e2e/test_ui.py

test-faults: install  ## failures, kills, lost processes, checkpoints, a tracking server stopped mid-sweep (minutes)
	$(BIN)/pytest -m slow -rs tests/e2e/test_failures.py tests/e2e/test_server_loss.py

test-cluster: install  ## sweeps on the SLURM cluster of `make cluster-up` (skipped, saying why, without one)
	$(BIN)/pytest -m 'cluster and not slow' -rs -v tests/e2e/test_slurm.py

cluster-up:  ## (root) a one-node SLURM cluster with accounting on this machine: .ci/slurm up
	.ci/slurm up

cluster-down:  ## (root) stop it
	.ci/slurm down

# The slow tests that test-faults, test-browser and test-cluster leave out.
test-slow: install  ## long checks: the goodness x activation grid, real MNIST (FFBENCH_DATA=/path/to/mnist)
	$(BIN)/pytest -m 'slow and not cluster' -rs tests --ignore=tests/e2e/test_failures.py \
		--ignore=tests/e2e/test_server_loss.py --ignore=tests/e2e/test_ui.py

bench: install  ## training speed against matmul throughput (minutes): JSON in outputs/bench/, table in docs/performance.md
	$(BIN)/python benchmarks/speed.py --docs

bench-memory: install  ## FF against BP / checkpointed BP in memory at depth 16, width 2000 (minutes)
	$(BIN)/python benchmarks/memory.py

results: install  ## docs/results.md, its pictures and the README's result blocks, and docs/memory.md's frontier and headline nets, from the records in docs/records/ (seconds)
	$(BIN)/python benchmarks/results.py
	$(BIN)/python benchmarks/frontier.py
	$(BIN)/python benchmarks/total_memory.py --docs

docs: install  ## regenerate docs/options.md from the schema (a unit test fails when it is stale)
	$(BIN)/python -c 'import pathlib, ffbench.config as c; pathlib.Path("docs/options.md").write_text(c.options_markdown())'

lint: install  ## ruff: style and formatting check (what CI runs)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install  ## ruff: fix what can be fixed, format the code
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# The UI starts without the 7 job-runner processes MLflow 3 starts for its GenAI features.
ui: install  ## the MLflow UI on the local store, http://127.0.0.1:5000 (STORE=PATH, UI_PORT=N); prints the links to open
	$(BIN)/python -m ffbench.ui sqlite:///$(STORE) --ui-url http://127.0.0.1:$(UI_PORT)
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=$${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false} \
		$(BIN)/mlflow ui --backend-store-uri sqlite:///$(STORE) --host 127.0.0.1 --port $(UI_PORT)

clean:  ## remove .venv and build leftovers (outputs/ stays)
	rm -rf $(VENV) build *.egg-info
