# Set-up is part of every target: a fresh clone needs only `make demo` or `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint gpu-check docs install clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/metrictransfer demo $(if $(OUT),--out $(OUT))

test: $(STAMP)
	$(BIN)/python -m pytest -q

# ruff (lint and import order) and mypy (types), both configured in pyproject.toml; CI runs them before the tests
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# Every GPU path in one command (tests, throughput tables, a Table 1 smoke run; about 10 min on one H100).
# DRY=1: the same scripts at toy sizes on the CPU (what CI runs, so they cannot rot).
gpu-check: $(STAMP)
	@$(BIN)/python -m benchmarks.gpu_check $(if $(filter 1 yes true,$(DRY)),--dry)

# The documentation site (docs/), offline; fails on any warning. SITE=DIR to build elsewhere.
docs: $(STAMP)
	$(BIN)/python scripts/config_reference.py --check
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir $(or $(SITE),site)

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache site
