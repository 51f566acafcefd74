# Quanto — `make demo` runs the demo pipeline, `make test` the test suite. Both set up .venv first.
PY        ?= python3.11
VENV      := .venv
BIN       := $(VENV)/bin
STAMP     := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: setup demo test test-unit test-integration bench lint format clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch is pinned to 2.13.0, whose CPU build the package index serves here; xgboost comes as xgboost-cpu.
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(BIN)/quanto demo

test: setup
	$(BIN)/pytest -q $(PYTEST_ARGS)

test-unit: setup
	$(BIN)/pytest -q tests/unit $(PYTEST_ARGS)

test-integration: setup
	$(BIN)/pytest -q tests/integration tests/e2e $(PYTEST_ARGS)

bench: setup
	@for f in benchmarks/*.py; do echo "# $$f" >&2; $(BIN)/python $$f || exit 1; done

lint: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

format: setup
	$(BIN)/ruff format src tests benchmarks
	$(BIN)/ruff check --fix src tests benchmarks

clean:
	rm -rf $(VENV) .quanto .pytest_cache .ruff_cache
