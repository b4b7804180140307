# tempint: `make help` lists the targets.
PYTHON ?= python
# The CPU wheel on a workstation; on a CUDA cluster: make install TORCH_SPEC="torch>=2.4,<2.14"
TORCH_SPEC ?= torch==2.13.0
ARGS ?=

.DEFAULT_GOAL := help

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2}'

install: ## install tempint (editable) with dev and sweep extras, torch pinned so nothing upgrades it
	$(PYTHON) -m pip install --quiet "$(TORCH_SPEC)"
	$(PYTHON) -c "import torch; print('torch==' + torch.__version__.split('+')[0])" > .torch-constraint.txt
	$(PYTHON) -m pip install --quiet -c .torch-constraint.txt -e ".[dev,sweep]"

train: ## train the default model (LiMNet) on the bundled Wikipedia data; ARGS="model=jodie ..." for overrides
	tempint-train $(ARGS)

test: ## run the fast test suite (slow tests deselected)
	$(PYTHON) -m pytest -m "not slow" -q $(ARGS)

test-all: ## run every test, including slow ones on real data
	$(PYTHON) -m pytest -q $(ARGS)

bench: ## speed and memory of every model (writes bench/results.md and bench/results.json)
	$(PYTHON) bench/run.py $(ARGS)

bench-quick: ## a subset of the benchmark, under 3 minutes
	$(PYTHON) bench/run.py --quick $(ARGS)

gpu-check: ## on a CUDA machine (~8 min): CUDA-marked tests, GPU benchmark into bench/gpu/, fast tests
	bash scripts/gpu_check.sh

lint: ## ruff check and format check
	ruff check tempint tests bench examples
	ruff format --check tempint tests bench examples

format: ## apply ruff fixes and formatting
	ruff check --fix tempint tests bench examples
	ruff format tempint tests bench examples

clean: ## remove caches, outputs and build files
	rm -rf outputs multirun .pytest_cache .ruff_cache build *.egg-info .torch-constraint.txt
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

.PHONY: help install train test test-all bench bench-quick gpu-check lint format clean
