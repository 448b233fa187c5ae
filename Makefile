# Two commands on a fresh machine:
#   make demo   - set up .venv and run the main job (a dense-vs-MoE comparison report)
#   make test   - set up .venv and run lint + the test suite (what .ci/run calls)
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
# torch==2.13.0 is the CPU wheel this machine carries; a bare `torch` would pull CUDA wheels.
TORCH  ?= torch==2.13.0

.PHONY: setup demo test test-fast perf lint format clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[torch,dask,dev]"
	touch $@

demo: setup
	$(BIN)/moesim inspect mixtral-8x7b
	$(BIN)/moesim validate scenarios/mixtral-8x7b-pretrain-256xh100.yaml

test: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -q

perf: setup
	$(BIN)/python -m pytest -q tests/perf -p no:cacheprovider -s

lint: setup
	$(BIN)/ruff check .

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
