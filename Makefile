# UserManager: the two commands a newcomer needs are `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 0.0.0.0
PORT ?= 8000
WORKERS ?= 1
PYTEST_ARGS ?=
# Test processes (pytest-xdist; each test file runs whole in one of them). Three on two
# cores: many tests spend their time waiting on servers they started.
PYTEST_WORKERS ?= 3

# The static checks, run by `make lint` and before the suite by `make test` (and by
# .pre-commit-config.yaml): lint, formatting, types (mypy reads pyproject.toml).
define STATIC_CHECKS
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
endef

.PHONY: run test lint format reports bench audit clean

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "Python >= 3.11 is needed (set PYTHON=python3.11 or newer)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.runtime-installed: app/requirements.txt | $(BIN)/python
	$(BIN)/python -m pip install --quiet -r app/requirements.txt
	@touch $@

$(VENV)/.test-installed: app/requirements.txt app/test/requirements.txt | $(BIN)/python
	$(BIN)/python -m pip install --quiet -r app/test/requirements.txt
	@touch $@ $(VENV)/.runtime-installed

## run: serve the API on http://$(HOST):$(PORT) (SQLite in ./data unless configured)
run: $(VENV)/.runtime-installed
	PATH="$(CURDIR)/$(BIN):$$PATH" HOST=$(HOST) PORT=$(PORT) WORKERS=$(WORKERS) sh scripts/serve.sh

## test: install everything, run the static checks, run the suite with coverage
test: $(VENV)/.test-installed
	bash scripts/install-test-tools.sh
	$(STATIC_CHECKS)
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) --dist loadfile --durations=15 --cov --cov-report=term:skip-covered $(PYTEST_ARGS)

## lint: ruff (lint and formatting) and mypy, without the suite
lint: $(VENV)/.test-installed
	$(STATIC_CHECKS)

format: $(VENV)/.test-installed
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

## reports: the pytest, coverage and lint reports, written into reports/
reports: $(VENV)/.test-installed
	mkdir -p reports
	-$(BIN)/python -m pytest --cov --cov-report=term --md-report --md-report-flavor common_mark \
		--md-report-output reports/pytest.md $(PYTEST_ARGS) | tee reports/pytest.txt
	$(BIN)/coverage report > reports/coverage.txt
	-$(BIN)/ruff check . --output-format concise > reports/lint.txt
	@echo "reports written to reports/"

## bench: the performance budget (README, Performance) measured into reports/benchmark.md
## (BENCH_DATABASE_URL / BENCH_REDIS_URL add a PostgreSQL + Redis run)
bench: $(VENV)/.test-installed
	bash scripts/install-bench-tools.sh
	$(BIN)/python load-test/bench.py $(BENCH_ARGS)

## audit: known vulnerabilities in the pinned requirements (needs PyPI's JSON API)
audit: $(VENV)/.test-installed
	$(BIN)/pip-audit --strict --disable-pip --no-deps -r app/requirements.txt

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache .coverage htmlcov
