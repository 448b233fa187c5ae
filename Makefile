# Two commands on a fresh machine:
#   make demo   - set up .venv and run the main job (a dense-vs-MoE comparison report)
#   make test   - set up .venv and run lint + the test suite (what .ci/run calls)
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
# torch==2.13.0 is the CPU wheel this machine carries; a bare `torch` would pull CUDA wheels.
TORCH  ?= torch==2.13.0

.PHONY: setup browser demo reports reproduce readme-table test perf lint format clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[torch,dask,dev]"
	touch $@

# The main job: should we pretrain Mixtral 8x7B or a dense model? A table and an HTML report.
demo: setup
	$(BIN)/moesim compare scenarios/compare-mixtral-vs-dense-pretrain.yaml \
	  --html reports/mixtral-vs-dense-pretrain.html

# Regenerate every example report in reports/ from scenarios/ (about 4 minutes on 2 cores).
reports: setup
	$(BIN)/moesim compare scenarios/compare-mixtral-vs-dense-pretrain.yaml \
	  --html reports/mixtral-vs-dense-pretrain.html
	$(BIN)/moesim sweep scenarios/sweeps/mixtral-ep-vs-skew.yaml \
	  -o out/mixtral-ep-vs-skew.csv --html reports/mixtral-ep-vs-skew.html
	$(BIN)/moesim plan scenarios/plans/mixtral-pretrain-30-days.yaml \
	  --html reports/mixtral-pretrain-plan.html
	$(BIN)/moesim compare scenarios/compare-mixtral-vs-dense-serving.yaml \
	  --html reports/mixtral-vs-dense-serving.html
	$(BIN)/moesim compare scenarios/compare-moe-post-training.yaml \
	  --html reports/moe-post-training.html
	$(BIN)/moesim compare scenarios/compare-grpo-sync-vs-async.yaml \
	  --html reports/grpo-sync-vs-async.html
	$(BIN)/moesim plan scenarios/plans/mixtral-serving-slo.yaml \
	  --html reports/mixtral-serving-plan.html
	$(BIN)/moesim plan scenarios/plans/llama-405b-16384xh100-goodput.yaml \
	  --html reports/llama-405b-goodput-plan.html
	$(BIN)/moesim compare scenarios/compare-deepseek-v3-gb200-nvl72-vs-h100.yaml \
	  --html reports/deepseek-v3-gb200-nvl72-vs-h100.html
	$(BIN)/moesim report scenarios/serving/deepseek-v3-pd-disaggregated-48xh200.yaml \
	  -o reports/deepseek-v3-pd-disaggregated.html
	$(BIN)/moesim report scenarios/serving/mixtral-8x7b-trace-replay-2xh100.yaml \
	  --no-sensitivity -o reports/mixtral-trace-replay.html
	$(BIN)/moesim report scenarios/serving/deepseek-v3-mtp-vllm-v1-8xh200.yaml \
	  -o reports/deepseek-v3-mtp-speculative.html
	$(BIN)/moesim report scenarios/post-training/llama-3-8b-grpo-kv-bound-8xh100.yaml \
	  -o reports/llama-3-8b-grpo-kv-bound.html
	$(BIN)/moesim plan scenarios/plans/mixtral-pd-serving.yaml \
	  --html reports/mixtral-pd-serving-plan.html
	$(BIN)/moesim reproduce --html reports/published-runs.html

# Every published run (scenarios/published/) simulated against its figure: an HTML report.
reproduce: setup
	$(BIN)/moesim reproduce --html reports/published-runs.html

# Rewrite the README's table between <!-- reproduce:begin --> and <!-- reproduce:end -->.
readme-table: setup
	$(BIN)/moesim reproduce --markdown > .reproduce-table.md || { rm -f .reproduce-table.md; exit 2; }
	$(BIN)/python -m moesim.reproduce.markdown README.md < .reproduce-table.md
	rm -f .reproduce-table.md

# The report test opens an HTML report in headless Chromium (Debian's package).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "installing Debian's chromium for the report browser test"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) \
	    >/dev/null 2>&1 || echo "warning: could not install chromium"; }

test: setup browser
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
