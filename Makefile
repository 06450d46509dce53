# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
export BRONZE_DATA_DIR ?= $(CURDIR)/data
# Runs of the demo and the UI hand a ranged run's per-partition events to the event log in one batch:
# PostgreSQL storage (the instance of both, see dagster.yaml) writes them in one INSERT (README "Deploying").
demo ui: export DAGSTER_EVENT_BATCH_SIZE ?= 1000

.PHONY: demo test lint ui bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,spark]'
	touch $(STAMP)

# The instance profile of make demo/ui (PostgreSQL on the embedded server); a changed copy is kept as .bak
$(BRONZE_DATA_DIR)/dagster_home/dagster.yaml: dagster.yaml
	@mkdir -p $(BRONZE_DATA_DIR)/dagster_home
	@if test -f $@ && ! cmp -s dagster.yaml $@; then cp $@ $@.bak; echo "updated $@ (previous: $@.bak)"; fi
	@cp dagster.yaml $@

demo: $(STAMP) $(BRONZE_DATA_DIR)/dagster_home/dagster.yaml  ## seed the embedded source (if empty) and load every bronze table
	@DAGSTER_HOME=$(BRONZE_DATA_DIR)/dagster_home $(BIN)/bronze demo

test: $(STAMP)  ## install the system packages and jars the tests need, lint, then run the whole test suite
	bash scripts/install-system-deps.sh
	bash scripts/install-azurite.sh
	$(BIN)/python -m bronze_assets.lib.spark.jars
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -n 2 --dist loadgroup

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/ruff format --check . || true

PORT ?= 3000
ui: $(STAMP) $(BRONZE_DATA_DIR)/dagster_home/dagster.yaml  ## Dagster UI + daemon, instance on the embedded PostgreSQL (make ui PORT=3001)
	DAGSTER_HOME=$(BRONZE_DATA_DIR)/dagster_home $(BIN)/python -m bronze_assets.devserver -w workspace.yaml -p $(PORT)

bench: $(STAMP)  ## seed, ingestion (scale 1 and 10) and landing-file benchmarks (with dlt as the reference)
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	$(BIN)/python benchmarks/bench_seed.py --scales 1 10
	$(BIN)/python benchmarks/bench_ingest.py --scales 1 10
	$(BIN)/python benchmarks/bench_landing.py --scale 10

clean:
	rm -rf $(VENV) data .pytest_cache
