# edgeforge: `make all` produces an edge model, `make test` runs the suite.
# Both install into .venv first when needed (pinned by constraints.txt).

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
CONFIG ?= configs/default.yaml
ARTIFACTS ?= artifacts
BIN := $(VENV)/bin
EDGEFORGE := $(BIN)/edgeforge --artifacts $(ARTIFACTS)
STAGES := data teacher distill prune export quantize bench report

.PHONY: all test test-fast install install-dev lint status clean bench-cifar10 $(STAGES)

all: install
	$(EDGEFORGE) run --config $(CONFIG)

$(STAGES): install
	$(EDGEFORGE) stage $@ --config $(CONFIG)

status: install
	$(EDGEFORGE) status --config $(CONFIG)

# One pytest-xdist worker per core (each with one thread: tests/conftest.py). test-fast leaves out the tests marked
# slow (end-to-end runs in fresh interpreters, torchrun launches, deep-model exports): the inner loop.
test: install-dev
	$(BIN)/python -m pytest -q -n auto --dist worksteal

test-fast: install-dev
	$(BIN)/python -m pytest -q -n auto --dist worksteal -m "not slow"

lint: install-dev
	$(BIN)/ruff check pipeline stages tests benchmarks
	$(BIN)/ruff format --check pipeline stages tests benchmarks

clean: install
	$(EDGEFORGE) clean

# The CIFAR-10 CPU profile's numbers for BENCHMARKS.md: training throughput of the pipeline against a bare
# forward+backward (same run), the whole profile from an empty cache, then a second run that re-runs nothing.
CIFAR10_CPU := configs/cifar10-cpu.yaml
bench-cifar10: install
	$(BIN)/python benchmarks/throughput.py --config $(CIFAR10_CPU) --artifacts $(ARTIFACTS) --model resnet20 --batch-size 256
	$(BIN)/python benchmarks/throughput.py --config $(CIFAR10_CPU) --artifacts $(ARTIFACTS) --model resnet8 --batch-size 256
	time $(EDGEFORGE) run --config $(CIFAR10_CPU) || true
	time $(EDGEFORGE) run --config $(CIFAR10_CPU) --json || true
	$(EDGEFORGE) report || true

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

# With edgeforge[models] (torchvision, timm): a profile such as configs/finetune-pretrained.yaml names their models,
# and the tests cover those families.
$(VENV)/.installed: pyproject.toml constraints.txt Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[models]'
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev,models]'
	touch $@
