# The two newcomer commands are `make demo` and `make test`; both set up .venv first.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: setup demo test test-all bench clean

setup:
	@bash scripts/bootstrap.sh

## Run the main job on the embedded default (local Spark, Delta tables under ./warehouse).
demo: setup
	$(VENV)/bin/mtl-ingest --conf conf/local.yaml

## The test suite CI runs: everything but tests marked slow.
test: setup
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

test-all: setup
	$(PY) -m pytest $(PYTEST_ARGS)

## Benchmarks recorded in BENCHMARKS.md (tens of minutes on 2 cores).
bench: setup
	$(PY) benchmarks/ingest.py
	$(PY) benchmarks/generate.py

clean:
	rm -rf warehouse spark-warehouse .pytest_cache
