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
	$(VENV)/bin/python -m pip install -q -e '.[dev,sweeps,hf,serve,mlflow]'
	touch $@

# The declared floors of pyproject.toml (lightning, torchmetrics), with torch $(TORCH): a second venv and a subset
# that trains with validation, tests the best checkpoint, resumes, translates and evaluates.
FLOOR_VENV ?= .venv-floor
FLOORS ?= $(shell grep -oE '"(lightning|torchmetrics)>=[0-9.]+' pyproject.toml | sed 's/"//; s/>=/==/')
FLOOR_TESTS ?= tests/test_app.py tests/test_resume.py tests/test_faults.py tests/test_sweep_jobs.py tests/test_translate.py

$(FLOOR_VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(FLOOR_VENV)
	$(FLOOR_VENV)/bin/python -m pip install -q --upgrade pip
	$(FLOOR_VENV)/bin/python -m pip install -q "$(TORCH)" $(TORCH_PIP_ARGS)
	$(FLOOR_VENV)/bin/python -m pip install -q -e '.[dev]' $(FLOORS)
	touch $@

.PHONY: install train test test-floor lint
install: $(VENV)/.installed

train: $(VENV)/.installed
	$(VENV)/bin/lnmt-train $(ARGS)

test: $(VENV)/.installed
	WANDB_MODE=offline $(VENV)/bin/pytest -m "slow or not slow" $(PYTEST_ARGS)

test-floor: $(FLOOR_VENV)/.installed
	$(FLOOR_VENV)/bin/python -c "import lightning, torchmetrics; print('floor: lightning', lightning.__version__, 'torchmetrics', torchmetrics.__version__)"
	WANDB_MODE=offline $(FLOOR_VENV)/bin/pytest -m "slow or not slow" $(FLOOR_TESTS) $(PYTEST_ARGS)

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check lightning_nmt hydra_plugins tests benchmarks
