# EventReach — the two commands: `make demo` (run the weekly batch locally) and `make test`.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export EVENTREACH_HOME ?= $(CURDIR)/.eventreach
export DAGSTER_HOME ?= $(EVENTREACH_HOME)/dagster_home
PROFILES ?= 300000
SEED ?= 7

LIFECYCLE_HOME ?= $(CURDIR)/.eventreach-lifecycle
STEP_MINUTES ?= 60

.PHONY: install demo demo-lifecycle dev test lint bench clean

$(STAMP): setup.py constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	touch $@

install: $(STAMP)

$(DAGSTER_HOME)/dagster.yaml: dagster.yaml
	mkdir -p $(DAGSTER_HOME)
	cp dagster.yaml $@

## Seed a synthetic warehouse, register the sample events and run the weekly batch for them.
demo: $(STAMP) $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/eventreach-demo demo --profiles $(PROFILES) --seed $(SEED)

## SIMULATED: one event from invitation to survey on a fast clock, through the real schedules and
## sensors, in its own data dir (replaced on each play; browse it with `make dev EVENTREACH_HOME=$(LIFECYCLE_HOME)`).
demo-lifecycle: $(STAMP)
	rm -rf $(LIFECYCLE_HOME)  # each play starts from an empty instance and data dir
	mkdir -p $(LIFECYCLE_HOME)/dagster_home
	cp dagster.yaml $(LIFECYCLE_HOME)/dagster_home/dagster.yaml
	EVENTREACH_HOME=$(LIFECYCLE_HOME) DAGSTER_HOME=$(LIFECYCLE_HOME)/dagster_home \
		$(BIN)/eventreach-demo lifecycle --home $(LIFECYCLE_HOME) --step-minutes $(STEP_MINUTES) --seed $(SEED)

## The Dagster UI (and daemon) on the same instance the demo wrote to.
dev: $(STAMP) $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/dagster dev -w workspace.yaml -h 127.0.0.1 -p 3000

## The tests' files (SQLite stores and ledgers, Dagster instances, DuckDB warehouses, Postgres) go to
## RAM-backed /dev/shm when it is writable with 4 GB free: the same files and syscalls, but a sync
## there costs nothing (on a slow disk the longest test spent ~1/5 of its time in Dagster's and SQLite's
## syncs; docs/layout.md). Elsewhere, or with TEST_TMPDIR set, the system's temporary directory as usual.
TEST_TMPDIR ?= $(shell [ -w /dev/shm ] && [ "$$(df -Pk /dev/shm | awk 'NR==2 {print $$4}')" -gt 4000000 ] && echo /dev/shm/eventreach-tests)

test: $(STAMP)
	$(BIN)/ruff check eventreach_assets eventreach_assets_tests docs/experiments
	$(if $(TEST_TMPDIR),mkdir -p $(TEST_TMPDIR) && TMPDIR=$(TEST_TMPDIR)) $(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check eventreach_assets eventreach_assets_tests docs/experiments
	$(BIN)/ruff format --check eventreach_assets eventreach_assets_tests docs/experiments

## Weekly batch for one event through Dagster at 300K, 1M and 3M profiles.
bench: $(STAMP)
	$(BIN)/python -m eventreach_assets.bench

.PHONY: serve bench-serving bench-sends
SERVE_PORT ?= 8000

## The Serving API (Starlette on uvicorn) on http://127.0.0.1:$(SERVE_PORT) over the local data dir;
## with no env set it creates an API key and a webhook secret in $(EVENTREACH_HOME) and prints where.
serve: $(STAMP)
	$(BIN)/python -m eventreach_assets.serving.api --host 127.0.0.1 --port $(SERVE_PORT)

## Serving API under load beside a bare uvicorn/Starlette reference (same workers, a fixed 100-item page):
## 100K candidates, 32 and 64 connections, 30 s x3 each on a mix of the three queries (wrk when installed).
bench-serving: $(STAMP)
	$(BIN)/python -m eventreach_assets.serving.bench

## Sending 50,000 invitation emails (.ics included) through today's send loop, 3 runs each: outbox + SQLite ledger,
## outbox + DynamoDB ledger (moto) and SMTP (aiosmtpd answering in 20 ms) at 2,000 messages; beside the bare render cost.
bench-sends: $(STAMP)
	$(BIN)/python -m eventreach_assets.bench_sends

clean:
	rm -rf $(EVENTREACH_HOME) $(LIFECYCLE_HOME)
