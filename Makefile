# Two commands on a fresh machine:
#   make train   the main job: train.py on the quick-start config (offline, synthetic data, ~1 min)
#   make test    ruff, then the test suite
# Each creates or updates the virtual environment in $(VENV) when it is missing or stale.
VENV   ?= .venv
PYTHON ?= python3
PY     := $(VENV)/bin/python
# torch goes in first, pinned, so no later requirement can pull another build (see pyproject.toml)
TORCH  ?= torch==2.13.0

.PHONY: env train test test-slow bench profile clean

$(VENV)/.installed: pyproject.toml Makefile
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 10), "Python >= 3.10 is required, found " + sys.version.split()[0]'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e ".[dev,bench]"
	@$(PY) -c 'import torch, sys; print("environment ready: torch", torch.__version__, "python", sys.version.split()[0])'
	@touch $@

env: $(VENV)/.installed

train: $(VENV)/.installed
	$(PY) train.py --config configs/quickstart.yaml $(ARGS)

test: $(VENV)/.installed
	$(PY) -m ruff check .
	$(PY) -m pytest

test-slow: $(VENV)/.installed
	$(PY) -m pytest -m slow

bench: $(VENV)/.installed
	$(PY) benchmarks/bench_attention.py $(ARGS)

profile: $(VENV)/.installed
	$(PY) profile.py --devices cpu,gpu $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache
