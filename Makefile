# One command each: `make demo` (set up, then train on the embedded demo dataset) and
# `make test` (set up, then lint and run the tests). `make setup` only builds ./.venv.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
REQUIREMENTS := requirements.txt requirements-dev.txt launch/requirements.txt constraints.txt pyproject.toml

.PHONY: setup demo test test-all lint format clean gpu-check docs

setup: $(STAMP)

# Rebuilt whenever a requirements file or pyproject.toml changes (the packages birdsed and birdsed_launch
# are installed in editable mode, so code changes need no reinstall); the stamp is written only after a full install.
$(STAMP): $(REQUIREMENTS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -r requirements-dev.txt -c constraints.txt
	$(PY) -m pip install --disable-pip-version-check -q --no-deps --editable .
	$(PY) -m pip check
	touch $(STAMP)

demo: setup
	$(PY) launch/demo.py

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# Tests run in TEST_WORKERS processes (pytest-xdist), one test file per process at a time, so that the
# module fixtures that train a model run once: most tests use under one core (tiny models, subprocesses
# starting), so two processes on CI's 2 cores take about half the time (docs/development.md).
TEST_WORKERS ?= 2

test: lint
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile --durations=15 -m "not extended"

# Everything, the `extended` variants too (a few minutes more).
test-all: lint
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile --durations=15

# The CUDA paths on one GPU in under 8 minutes, with the machine's own Python (no .venv, no setup);
# without CUDA, the same checks as a CPU smoke run. GPU_CHECK_ARGS="--wheels DIR ..." passes options.
# See docs/gpu-check.md.
gpu-check:
	$(PYTHON) tests/gpu_check.py $(GPU_CHECK_ARGS)

# docs/hyperparameters.md from the config's field metadata (tests/test_config_doc.py fails when it is stale).
docs: setup
	$(PY) -m birdsed.config_doc

format: setup
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf $(VENV) demo_run .pytest_cache .ruff_cache
