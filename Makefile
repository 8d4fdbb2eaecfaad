# The two commands of the README: `make run` (the whole stack on local servers) and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
TEST_TMP := .local/pytest

.PHONY: run test check lint types bench services-up services-down clean

$(STAMP): pyproject.toml clients/python/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev,local]' -e clients/python
	touch $(STAMP)

## Start Postgres, Redis and Neo4j locally, migrate, then web, relay, worker and scheduler.
run: $(STAMP)
	$(BIN)/memctl run

## The whole test suite: lint, types, then pytest on the real servers (started and stopped by it).
test: $(STAMP) check
	mkdir -p $(TEST_TMP)
	$(BIN)/python -m pytest --basetemp=$(TEST_TMP)/run ; status=$$? ; \
	  $(BIN)/python -m tests.reap $(TEST_TMP) ; exit $$status

check: lint types

lint: $(STAMP)
	$(BIN)/ruff check .

types: $(STAMP)
	$(BIN)/mypy

## Benchmarks (not tests): results under bench/results/.
bench: $(STAMP)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev,local,bench]'
	$(BIN)/python -m bench $(ARGS)

services-up: $(STAMP)
	$(BIN)/memctl services up

services-down: $(STAMP)
	$(BIN)/memctl services down

clean:
	rm -rf $(VENV) .local .pytest_cache .mypy_cache .ruff_cache
