# Two commands on a fresh clone:  `make train`  and  `make test`.
# Each creates .venv (if needed) and installs what it needs. Pass overrides with ARGS="model=basic ...".
# torch: TORCH picks the build. Default torch==2.13.0 (CUDA on Linux from PyPI; a CPU-only build with
#   TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu").
VENV ?= .venv
PYTHON ?= python3
TORCH ?= torch==2.13.0
TORCH_PIP_ARGS ?=
ARGS ?=
PYTEST_ARGS ?=

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip
	$(VENV)/bin/python -m pip install -q "$(TORCH)" $(TORCH_PIP_ARGS)
	$(VENV)/bin/python -m pip install -q -e '.[dev,sweeps,hf]'
	touch $@

.PHONY: install train test lint
install: $(VENV)/.installed

train: $(VENV)/.installed
	$(VENV)/bin/lnmt-train $(ARGS)

test: $(VENV)/.installed
	WANDB_MODE=offline $(VENV)/bin/pytest -m "slow or not slow" $(PYTEST_ARGS)

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check lightning_nmt tests benchmarks
