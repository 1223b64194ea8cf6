# Everything runs inside .venv, created on first use and refreshed when pyproject.toml changes.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test lint format test-fast bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test,bench]'
	touch $@

# Real ViT weights for the demo (examples/demo.py): `make demo VIT_WEIGHTS=FILE [VIT=dino_vits16]`.
VIT_WEIGHTS ?=
VIT ?=

demo: $(BIN)/.installed  ## search the example pairs here (local Ray, local MLflow), render the winners, report
	$(BIN)/python examples/demo.py --vit-weights "$(VIT_WEIGHTS)" --vit "$(VIT)"

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
