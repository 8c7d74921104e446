# `make demo` and `make test` are the whole set-up on a fresh machine: each creates .venv if missing,
# installs vidpost (CPU torch pinned by constraints.txt) and runs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
DEMO := runs/demo

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	touch $(STAMP)

# Until the four-stage pipeline exists, the demo is the largest part that does: ShapeWorld datasets in
# both styles (same scenes), scored against the true canonical captions.
demo: $(STAMP)
	$(BIN)/vidpost world make --out $(DEMO)/curated --n 64 --seed 0 --split eval --style curated --overwrite
	$(BIN)/vidpost world make --out $(DEMO)/web --n 64 --seed 0 --split eval --style web --overwrite
	$(BIN)/vidpost score $(DEMO)/curated $(DEMO)/web --caption-key canonical --json $(DEMO)/scores.json

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check src tests bench

bench: $(STAMP)
	$(BIN)/python bench/rewards_speed.py

clean:
	rm -rf $(VENV) runs
