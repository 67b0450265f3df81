# Two commands on a fresh machine: `make repro` runs the pipeline, `make test` runs the tests.
# Both create .venv first if it is missing or its requirements changed.
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
# dvc runs each stage as `python -m stages.<name>`: that must be the venv's python.
export PATH := $(BIN):$(PATH)
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: repro test lint venv dev predict serve sweep

repro: $(VENV)/.installed
	dvc repro

test: $(VENV)/.installed-dev lint
	python -m pytest $(PYTEST_ARGS)

lint: $(VENV)/.installed-dev
	ruff check .

# The class of each image: make predict IMAGES="a.png b.png" (add --top 3, --json, --debug DIR).
predict: $(VENV)/.installed
	@test -n "$(IMAGES)" || { echo 'usage: make predict IMAGES="a.png b.png [--top K] [--json] [--debug DIR]"' >&2; exit 2; }
	python -m app.predict $(IMAGES)

# The HTTP API and the draw-a-digit page on http://$(HOST):$(PORT)/ (WORKERS=2 for two processes).
serve: $(VENV)/.installed
	HOST=$(HOST) PORT=$(PORT) python -m app.api

# A grid of DVC experiments on a Ray cluster, this machine's unless --address (or $RAY_ADDRESS)
# names one: make sweep ARGS="-S 'train.seed=1,2,3'" (docs/sweeps.md).
sweep: $(VENV)/.installed-sweep
	python -m sweep $(ARGS)

venv: $(VENV)/.installed
dev: $(VENV)/.installed-dev

$(VENV)/.installed: requirements.txt app/requirements.txt
	test -x $(BIN)/python || python3 -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed requirements-dev.txt requirements-s3.txt
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	touch $@

$(VENV)/.installed-sweep: $(VENV)/.installed requirements-sweep.txt
	$(BIN)/python -m pip install --quiet -r requirements-sweep.txt
	touch $@
