# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
# Machine-specific pins live here, not in pyproject: TORCH_SPEC installs the CPU torch first
# so that the package's `torch>=2.1` range is already satisfied and pip pulls no CUDA wheels.
# Override it (e.g. TORCH_SPEC=) to keep a torch you installed yourself.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
DEMO_OUT ?= demo_out
RECIPE_OUT ?= tianchi_recipe_out

.PHONY: demo recipe-tianchi test lint format clean install crosscheck

$(VENV)/.stamp-base:
	$(PYTHON) -m venv $(VENV)
	@if $(PY) -c "import torch" 2>/dev/null; then echo "keeping installed torch"; \
	elif [ -n "$(TORCH_SPEC)" ]; then $(PY) -m pip install -q "$(TORCH_SPEC)"; fi
	touch $@

$(VENV)/.stamp-demo: $(VENV)/.stamp-base pyproject.toml
	$(PY) -m pip install -q -e ".[models,faiss,train,serve]"
	touch $@

# open_clip is installed without its dependencies for the tests: its torchvision requirement
# would pull a CUDA build here. The open_clip tests shim torchvision inside the test module only.
# The test extra includes `caption` (the openai client, for the loopback caption tests) and `t2i`.
# torch-fidelity likewise (it requires torchvision): the t2i tests import its Inception
# extractor and TF resize without its package __init__, to check xmr's against them.
$(VENV)/.stamp-test: $(VENV)/.stamp-base pyproject.toml
	$(PY) -m pip install -q -e ".[test,caption,t2i,onnx,ray]"
	$(PY) -m pip install -q --no-deps "open_clip_torch>=2.24" ftfy wcwidth
	$(PY) -m pip install -q --no-deps "torch-fidelity==0.4.0"
	touch $@

install: $(VENV)/.stamp-demo

demo: $(VENV)/.stamp-demo
	$(VENV)/bin/xmr demo --out $(DEMO_OUT)

# Seed 001's table (tianchi) on generated data with the demo's tiny CLIP; see the README.
recipe-tianchi: $(VENV)/.stamp-demo
	$(VENV)/bin/xmr demo --recipe tianchi --out $(RECIPE_OUT)

test: $(VENV)/.stamp-test
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

lint: $(VENV)/.stamp-test
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks
	$(VENV)/bin/lint-imports

format: $(VENV)/.stamp-test
	$(VENV)/bin/ruff check --fix src tests benchmarks
	$(VENV)/bin/ruff format src tests benchmarks

# FID/IS against torch-fidelity itself, and xmr's preprocessing against transformers' torchvision
# processors, both need torchvision: its own venv with a torch and torchvision that load together
# (~5.5 GB). Not part of `make test`.
CROSSCHECK_VENV ?= $(VENV)/crosscheck
$(CROSSCHECK_VENV)/.stamp:
	$(PYTHON) -m venv $(CROSSCHECK_VENV)
	$(CROSSCHECK_VENV)/bin/pip install -q torch==2.14.1 torchvision==0.29.1
	$(CROSSCHECK_VENV)/bin/pip install -q -e ".[models]" "torch-fidelity==0.4.0"
	touch $@

CROSSCHECK_ARGS ?= --images 30
crosscheck: $(CROSSCHECK_VENV)/.stamp
	$(CROSSCHECK_VENV)/bin/python benchmarks/crosscheck_torch_fidelity.py $(CROSSCHECK_ARGS)
	$(CROSSCHECK_VENV)/bin/python benchmarks/crosscheck_processor_backends.py

clean:
	rm -rf $(VENV) $(DEMO_OUT) $(RECIPE_OUT) .pytest_cache .ruff_cache
