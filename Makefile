# UserManager: the two commands a newcomer needs are `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 0.0.0.0
PORT ?= 8000
WORKERS ?= 1
PYTEST_ARGS ?=

.PHONY: run test lint format clean

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
	$(BIN)/fastapi run app/main.py --host $(HOST) --port $(PORT) --workers $(WORKERS) \
		--no-proxy-headers

## test: install everything, lint, run the suite with coverage
test: $(VENV)/.test-installed
	bash scripts/install-test-tools.sh
	$(BIN)/ruff check .
	$(BIN)/python -m pytest --cov --cov-report=term:skip-covered $(PYTEST_ARGS)

lint: $(VENV)/.test-installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(VENV)/.test-installed
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .coverage htmlcov
