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

# Until the four-stage pipeline exists, the demo runs what has landed: the shipped base and SFT models
# generate videos for 32 unseen eval captions, scored beside the real curated clips of the same captions.
demo: $(STAMP)
	mkdir -p $(DEMO)
	$(BIN)/vidpost world make --out $(DEMO)/real --n 32 --seed 0 --split eval --style curated --overwrite
	$(BIN)/vidpost world prompts --n 32 --seed 0 --split eval > $(DEMO)/prompts.txt
	$(BIN)/vidpost sample --model shapeworld-base --prompts $(DEMO)/prompts.txt --out $(DEMO)/base --overwrite
	$(BIN)/vidpost sample --model shapeworld-sft --prompts $(DEMO)/prompts.txt --out $(DEMO)/sft --overwrite
	$(BIN)/vidpost score $(DEMO)/base $(DEMO)/sft $(DEMO)/real --json $(DEMO)/scores.json

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check src tests bench

bench: $(STAMP)
	$(BIN)/python bench/rewards_speed.py
	$(BIN)/python bench/shapeworld_models.py

clean:
	rm -rf $(VENV) runs
