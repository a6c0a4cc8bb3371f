# edgeforge: `make all` produces an edge model, `make test` runs the suite.
# Both install into .venv first when needed (pinned by constraints.txt).

PYTHON ?= python3
VENV ?= .venv
CONFIG ?= configs/default.yaml
ARTIFACTS ?= artifacts
BIN := $(VENV)/bin
EDGEFORGE := $(BIN)/edgeforge --artifacts $(ARTIFACTS)
STAGES := data teacher distill prune export quantize bench report

.PHONY: all test install install-dev lint status clean $(STAGES)

all: install
	$(EDGEFORGE) run --config $(CONFIG)

$(STAGES): install
	$(EDGEFORGE) stage $@ --config $(CONFIG)

status: install
	$(EDGEFORGE) status --config $(CONFIG)

test: install-dev
	$(BIN)/python -m pytest -q

lint: install-dev
	$(BIN)/ruff check pipeline stages tests
	$(BIN)/ruff format --check pipeline stages tests

clean: install
	$(EDGEFORGE) clean

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $@
