# infoplane: config -> train -> archive -> estimate -> results -> figures.
# Every target bootstraps .venv itself; `make all` runs the default experiment end to end.
CONFIG ?= configs/szt_tanh.toml
RUNS ?= data/runs
SCHEDULER ?=
ARCHIVE ?=
# the folder torchvision datasets are read from (data.root); the built-in configs default to it
DATA ?= data/datasets
ESTIMATORS ?=
ARGS ?=
# test processes side by side (pytest-xdist); 2 matches CI's two cores
TEST_WORKERS ?= 2
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install train estimate figures verify all test bench lint clean reproduce findings

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

train: $(STAMP)
	$(PY) -m stages.train --config $(CONFIG) --runs $(RUNS) --set data.root=$(DATA) $(ARGS)

# ARCHIVE=path/archive.zarr: any recorded archive (ESTIMATORS=file.toml: its [estimators.*] tables)
RUN_ARGS = $(if $(ARCHIVE),--archive $(ARCHIVE),--config $(CONFIG) --runs $(RUNS))

estimate: $(STAMP)
	$(PY) -m stages.estimate $(RUN_ARGS) $(if $(and $(ARCHIVE),$(ESTIMATORS)),--config $(ESTIMATORS)) $(if $(SCHEDULER),--scheduler $(SCHEDULER)) $(ARGS)

figures: $(STAMP)
	$(PY) -m stages.figures $(RUN_ARGS) $(ARGS)

# Checks the run's archive and results store against what their commits wrote.
verify: $(STAMP)
	$(PY) -m stages.verify $(RUN_ARGS) $(ARGS)

# Runs every stage that exists so far.
all: $(STAMP)
	$(MAKE) train
	@if [ -f stages/estimate.py ]; then $(MAKE) estimate; fi
	@if [ -f stages/figures.py ]; then $(MAKE) figures; fi

test: $(STAMP)
	$(PY) -m ruff check pipeline stages tests benchmarks examples
	$(PY) -m pytest -q -n $(TEST_WORKERS)

bench: $(STAMP)
	$(PY) -m benchmarks.run

lint: $(STAMP)
	$(PY) -m ruff check pipeline stages tests benchmarks examples

# The seven experiments of docs/results.md exactly as run there (about 75 min on 2 cores; the MNIST
# runs read the official MNIST test set from DATA), then
# `make findings` writes every number and copies every figure into docs/results.md. KDE and the
# estimator comparison run on part of the cells (see configs/szt_*_paper.toml).
MNIST_OFFLINE := --set data.source_split=test --set data.download=false
# Section 3 (one seed): each comparison entry's cells carry an interval (docs/estimators.md)
COMPARISON := binning_10 binning_100 kde_upper_1e-3 kde_upper_1e-2 kde_upper_1e-1 kde_lower_1e-3 \
	kde_lower_1e-2 kde_lower_1e-1 compression
COMPARISON_INTERVALS := $(foreach e,$(COMPARISON),--set estimators.$(e).uncertainty=subsample) \
	--set estimators.renyi.uncertainty=batches
reproduce: $(STAMP)
	$(MAKE) train CONFIG=configs/szt_tanh_paper.toml
	$(MAKE) estimate CONFIG=configs/szt_tanh_paper.toml ARGS="--only binning_30 --splits all"
	$(MAKE) estimate CONFIG=configs/szt_tanh_paper.toml ARGS="--only fisher --seeds 0 1 2 3 --every 3"
	$(MAKE) estimate CONFIG=configs/szt_tanh_paper.toml ARGS="--only binning_10 binning_100 --seeds 0 --splits all --every 3 $(COMPARISON_INTERVALS)"
	$(MAKE) estimate CONFIG=configs/szt_tanh_paper.toml ARGS="--seeds 0 --splits all --every 6 $(COMPARISON_INTERVALS)"
	$(MAKE) figures CONFIG=configs/szt_tanh_paper.toml
	$(MAKE) train CONFIG=configs/szt_relu_paper.toml
	$(MAKE) estimate CONFIG=configs/szt_relu_paper.toml ARGS="--only binning_layer_100"
	$(MAKE) estimate CONFIG=configs/szt_relu_paper.toml ARGS="--only kde_upper_1e-1 --seeds 0 1 2 3 --every 6"
	$(MAKE) figures CONFIG=configs/szt_relu_paper.toml
	$(MAKE) all CONFIG=configs/mnist_mlp.toml ARGS="$(MNIST_OFFLINE) --set train.n_epochs=30 --set seeds=[0,1]"
	$(MAKE) all CONFIG=configs/mnist_cnn_cpu.toml
	$(MAKE) all CONFIG=configs/cifar10_vgg16_cpu.toml
	$(MAKE) findings

findings: $(STAMP)
	$(PY) -m benchmarks.findings --runs $(RUNS)

clean:
	rm -rf $(RUNS) figures .pytest_cache .ruff_cache
