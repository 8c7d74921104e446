# `make demo` and `make test` are the whole set-up on a fresh machine: each creates .venv if missing,
# installs vidpost (CPU torch pinned by constraints.txt) and runs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
DEMO := runs/pipeline

.PHONY: demo test lint typecheck bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	touch $(STAMP)

# The post-training pipeline from the shipped base model: each stage's held-out row is printed as it lands,
# and $(DEMO)/report.html shows the table, the training curves and the same prompts across stages.
demo: $(STAMP)
	$(BIN)/vidpost run configs/shapeworld/pipeline.yaml --out $(DEMO)

test: $(STAMP)
	$(BIN)/python -m pytest -q

# ruff on the code, mypy on src/ (config in pyproject.toml).
lint: $(STAMP)
	$(BIN)/ruff format --check src tests bench
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy

typecheck: $(STAMP)
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python bench/rewards_speed.py
	$(BIN)/python bench/shapeworld_models.py

clean:
	rm -rf $(VENV) runs
