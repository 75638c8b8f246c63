# `make demo` and `make test` work from a fresh clone: both create .venv when it is missing
# and (re)install flowmill into it whenever pyproject.toml is newer than the last install.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
EXTRAS := dev,postgres,redis,dashboard
STAMP := $(VENV)/.flowmill-installed
PYTEST_ARGS ?=
BENCH_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help install demo test lint typecheck pytest bench clean distclean

help:
	@echo "make demo       run the demo: a 200-task pipeline on an embedded SQLite file"
	@echo "make test       lint, type-check and run the test suite (PYTEST_ARGS=...)"
	@echo "make lint       ruff check and ruff format --check"
	@echo "make typecheck  mypy --strict (configured in pyproject.toml)"
	@echo "make bench      bench/throughput.py (BENCH_ARGS=...)"
	@echo "make clean      remove caches, build output and the demo database"
	@echo "make distclean  clean, and remove .venv too"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[$(EXTRAS)]'
	touch $@

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/flowmill demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/pytest -p no:cacheprovider $(PYTEST_ARGS)

test: lint typecheck pytest

bench: $(STAMP)
	$(BIN)/python bench/throughput.py $(BENCH_ARGS)

clean:
	rm -rf build dist .mypy_cache .ruff_cache .pytest_cache .hypothesis src/*.egg-info
	rm -f flowmill-demo.db flowmill-demo.db-wal flowmill-demo.db-shm
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
