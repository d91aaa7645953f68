# The two newcomer commands are `make demo` and `make test`; both set up .venv first.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: setup setup-airflow demo lint test test-all bench package cluster-up cluster-down clean

setup:
	@bash scripts/bootstrap.sh

## Airflow's own environment (.venv-airflow), for the DAG tests: as in production, apart from .venv.
setup-airflow:
	@bash scripts/bootstrap_airflow.sh

DEMO_DS ?= 2024-03-15

## Run the main job on the embedded default: generated data through the whole daily pipeline
## (local Spark; Delta tables and the MLflow store under ./warehouse).
demo: setup
	$(VENV)/bin/mtl-generate --conf conf/demo.yaml
	$(VENV)/bin/mtl-pipeline run --conf conf/demo.yaml --ds $(DEMO_DS)

## Lint and format check (ruff, configured in pyproject.toml); `make test` runs it first.
lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

## The test suite CI runs: lint, then everything but tests marked slow, on TEST_WORKERS processes
## (pytest-xdist; each test module stays on one worker, the longest modules start first).
TEST_WORKERS ?= 2
test: setup setup-airflow lint
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder -m "not slow" $(PYTEST_ARGS)

test-all: setup setup-airflow lint
	$(PY) -m pytest $(PYTEST_ARGS)

## Benchmarks recorded in BENCHMARKS.md (tens of minutes on 2 cores).
bench: setup
	$(PY) benchmarks/ingest.py
	$(PY) benchmarks/generate.py
	$(PY) benchmarks/features.py
	$(PY) benchmarks/model_train.py
	$(PY) benchmarks/train_loader.py --warehouse benchmarks/out/features/users_50000/warehouse
	$(PY) benchmarks/score.py
	$(PY) benchmarks/evaluate.py
	$(PY) benchmarks/click_bound.py --sessions-per-user-day 0.6 1.5 3 6 12

## What a cluster needs (README.md, "Running on a cluster"): dist/mtl-<version>.zip for --py-files
## and the packed environment dist/mtl-env-$(PROFILE).tar.gz for --archives (PROFILE=full|spark).
PROFILE ?= full
package: setup
	bash scripts/package.sh --profile $(PROFILE)

## A Spark standalone cluster on this machine (a master and two 1-core workers on 127.0.0.1) to
## try the cluster path; state and logs under .cluster/.
cluster-up: setup
	$(PY) scripts/standalone_cluster.py up --dir .cluster

cluster-down:
	$(PY) scripts/standalone_cluster.py down --dir .cluster

clean:
	rm -rf warehouse spark-warehouse .pytest_cache raw/demo
