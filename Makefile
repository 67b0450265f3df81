# Two commands on a fresh machine: `make repro` runs the pipeline, `make test` runs the tests.
# Both create .venv from requirements.txt first if it is missing or out of date.
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
# dvc runs each stage as `python -m stages.<name>`: that must be the venv's python.
export PATH := $(BIN):$(PATH)

.PHONY: repro test venv predict

repro: $(VENV)/.installed
	dvc repro

test: $(VENV)/.installed
	python -m pytest $(PYTEST_ARGS)

# The digit in each image: make predict IMAGES="a.png b.png" (add --top 3, --json, --model PATH).
predict: $(VENV)/.installed
	@test -n "$(IMAGES)" || { echo 'usage: make predict IMAGES="a.png b.png [--top K] [--json]"' >&2; exit 2; }
	python -m stages.predict $(IMAGES)

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt
	test -x $(BIN)/python || python3 -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	touch $@
