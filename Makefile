# Two commands on a fresh machine: `make repro` runs the pipeline, `make test-full` every test
# (`make test`: the quick loop).
# Both create .venv first if it is missing or its requirements changed.
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
# dvc runs each stage as `python -m stages.<name>`: that must be the venv's python.
export PATH := $(BIN):$(PATH)
PIP := $(BIN)/python -m pip install --disable-pip-version-check --progress-bar on
PLOTS := .dvc/plots
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: repro test test-full lint venv dev plots predict serve sweep

repro: $(VENV)/.installed $(PLOTS)/offline.html
	dvc repro

# The tests on three pytest-xdist workers (much of a test's time is a subprocess or a server
# waiting, so three keep two cores busy), one test at a time to each worker as it frees up
# (--maxschedchunk=1): the long ones go first (tests/conftest.py). `make test` is the quick
# loop: all but the tests marked slow (real `dvc` pipelines, sweeps on Ray, installs).
# `make test-full` runs every test, as CI does.
PYTEST := python -m pytest -n 3 --maxschedchunk=1
test: $(VENV)/.installed-dev $(PLOTS)/offline.html lint
	$(PYTEST) -m "not slow" --durations=10 $(PYTEST_ARGS)

test-full: $(VENV)/.installed-dev $(PLOTS)/offline.html lint
	$(PYTEST) --durations=15 $(PYTEST_ARGS)

lint: $(VENV)/.installed-dev
	ruff check .

# The class of each image: make predict IMAGES="a.png b.png" (add --top 3, --json).
predict: $(VENV)/.installed
	@test -n "$(IMAGES)" || { echo 'usage: make predict IMAGES="a.png b.png [--top K] [--json]"' >&2; exit 2; }
	python -m app.cli $(IMAGES)

# The HTTP API and the draw-a-digit page on http://$(HOST):$(PORT)/, a worker per core (WORKERS=N).
serve: $(VENV)/.installed
	HOST=$(HOST) PORT=$(PORT) python -m app.server.main

# A grid of DVC experiments on a Ray cluster, this machine's unless --address (or $RAY_ADDRESS)
# names one: make sweep ARGS="-S 'train.seed=1,2,3'" (docs/sweeps.md).
sweep: $(VENV)/.installed-sweep
	python -m sweep $(ARGS)

venv: $(VENV)/.installed
dev: $(VENV)/.installed-dev
plots: $(PLOTS)/offline.html

$(VENV)/.installed: requirements.txt app/requirements.txt
	@echo "== Installing the pipeline's packages into $(VENV): a few minutes the first time (TensorFlow alone is 250 MB)"
	test -x $(BIN)/python || python3 -m venv $(VENV)
	$(PIP) --quiet --upgrade pip
	$(PIP) -r requirements.txt
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed requirements-dev.txt requirements-s3.txt \
		requirements-ci.txt requirements-sweep.txt
	@echo "== Installing the test tools into $(VENV)"
	$(PIP) -r requirements-dev.txt
	touch $@

# The page `dvc plots show` fills, with the pinned Vega libraries inside it so that it draws
# offline, named in .dvc/config.local (this clone's own). Without npm, or in a clone where make
# never ran, DVC's own page, which loads them from their CDN.
$(PLOTS)/offline.html: $(VENV)/.installed $(PLOTS)/package.json $(PLOTS)/package-lock.json \
		$(PLOTS)/offline_page.py
	@echo "== Vega, Vega-Lite and vega-embed for dvc plots, from the npm registry"
	if command -v npm >/dev/null; then \
	  npm ci --prefix $(PLOTS) --no-audit --no-fund --ignore-scripts --loglevel=error && \
	  python3 $(PLOTS)/offline_page.py && dvc config --local plots.html_template plots/offline.html; \
	fi
	touch $@

$(VENV)/.installed-sweep: $(VENV)/.installed requirements-sweep.txt
	@echo "== Installing Ray into $(VENV), for make sweep"
	$(PIP) -r requirements-sweep.txt
	touch $@
