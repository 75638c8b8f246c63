# `make demo` and `make test` work from a fresh clone: both create .venv when it is missing
# and (re)install flowmill into it whenever pyproject.toml is newer than the last install.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
EXTRAS := dev,postgres,redis,dashboard
STAMP := $(VENV)/.flowmill-installed
PYTEST_ARGS ?=
BENCH_ARGS ?=
CHAOS_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help install demo test lint typecheck pytest chaos chaos-short bench clean distclean

help:
	@echo "make demo       run the demo: a 200-task pipeline on an embedded SQLite file"
	@echo "make test       lint, type-check and run the test suite (PYTEST_ARGS=...)"
	@echo "make lint       ruff check and ruff format --check"
	@echo "make typecheck  mypy --strict (configured in pyproject.toml)"
	@echo "make chaos      the long chaos tier, tests/chaos (<= 15 min; FLOWMILL_CHAOS_SEED=N replays)"
	@echo "make chaos-short  the short chaos tier CI runs (<= 5 min)"
	@echo "make bench      the standard benchmarks, < 5 min (BENCH_ARGS=... for throughput.py;"
	@echo "                BENCH_PEERS=1 also runs the peer harness first, ~15 min more)"
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

# The chaos tier is left out of `make test` (pyproject's addopts say -m 'not chaos'); a
# later -m replaces that one. Each run prints its seed: FLOWMILL_CHAOS_SEED=N replays it.
chaos: $(STAMP)
	$(BIN)/pytest -p no:cacheprovider -m chaos $(CHAOS_ARGS) tests/chaos

chaos-short: $(STAMP)
	$(BIN)/pytest -p no:cacheprovider -m "chaos and not long" $(CHAOS_ARGS) tests/chaos

# The standard set: this disk's commit ceiling, throughput (SQLite, N=5,000), the fan-out
# at 23,800 children, then flowmill's ratios to the peers from the last peer-harness run
# (bench/peers.py; BENCH_PEERS=1 runs the harness first, N=10,000, one run per system).
bench: $(STAMP)
	$(BIN)/python bench/sqlite_commit_ceiling.py --n 1000
	$(BIN)/python bench/throughput.py --n 5000 $(BENCH_ARGS)
	$(BIN)/python bench/fanout.py --children 23800
	$(BIN)/python bench/peers.py $(if $(BENCH_PEERS),,--report-only)

clean:
	rm -rf build dist .mypy_cache .ruff_cache .pytest_cache .hypothesis src/*.egg-info
	rm -f flowmill-demo.db flowmill-demo.db-wal flowmill-demo.db-shm
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
