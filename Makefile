# Everything runs inside .venv, created on first use and refreshed when pyproject.toml changes.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test lint format test-fast bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

demo: $(BIN)/.installed  ## quick search of the example pairs on this machine (local Ray, local MLflow)
	$(BIN)/splice-tune search examples/pairs.csv --space quick --warm-start auto
	$(BIN)/splice-tune best --all --out-dir splice-runs/demo-best
	$(BIN)/splice-tune report

test: lint  ## lint, then the whole suite, as CI runs it
	$(BIN)/python -m pytest -q

lint: $(BIN)/.installed  ## ruff: lint and format check (`make format` fixes the formatting)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(BIN)/.installed
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

test-fast: $(BIN)/.installed  ## everything but the slow (Ray/server) tests
	$(BIN)/python -m pytest -q -m "not slow"

bench: $(BIN)/.installed
	$(BIN)/python benchmarks/bench_step.py --vit random_tiny8 --size 96 --vit-size 64

clean:
	rm -rf $(VENV) splice-runs .pytest_cache
