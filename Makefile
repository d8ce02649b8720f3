# infoplane: config -> train -> archive -> estimate -> results -> figures.
# Every target bootstraps .venv itself; `make all` runs the default experiment end to end.
CONFIG ?= configs/szt_tanh.toml
RUNS ?= data/runs
SCHEDULER ?=
ARGS ?=
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install train estimate figures all test bench lint clean reproduce findings

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

train: $(STAMP)
	$(PY) -m stages.train --config $(CONFIG) --runs $(RUNS) $(ARGS)

estimate: $(STAMP)
	$(PY) -m stages.estimate --config $(CONFIG) --runs $(RUNS) $(if $(SCHEDULER),--scheduler $(SCHEDULER)) $(ARGS)

figures: $(STAMP)
	$(PY) -m stages.figures --config $(CONFIG) --runs $(RUNS) $(ARGS)

# Runs every stage that exists so far.
all: $(STAMP)
	$(MAKE) train
	@if [ -f stages/estimate.py ]; then $(MAKE) estimate; fi
	@if [ -f stages/figures.py ]; then $(MAKE) figures; fi

test: $(STAMP)
	$(PY) -m ruff check pipeline stages tests benchmarks
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) -m benchmarks.run

lint: $(STAMP)
	$(PY) -m ruff check pipeline stages tests benchmarks

# The experiments of docs/results.md (reduced SZT runs by default; TANH=configs/szt_tanh_paper.toml
# for the paper's 8000 epochs x 50 seeds), then the numeric checks written into docs/results.md.
TANH ?= configs/szt_tanh.toml
RELU ?= configs/szt_relu.toml
reproduce: $(STAMP)
	$(MAKE) all CONFIG=$(TANH)
	$(MAKE) all CONFIG=$(RELU)
	$(MAKE) findings

findings: $(STAMP)
	$(PY) -m benchmarks.findings --runs $(RUNS) --tanh $$(basename $(TANH) .toml) --relu $$(basename $(RELU) .toml)

clean:
	rm -rf $(RUNS) figures .pytest_cache .ruff_cache
