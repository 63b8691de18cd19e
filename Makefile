# Everything a fresh machine needs: `make test`, (later) `make serve`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# On a machine with a local CPU wheel of torch (pip's find-links), this picks it;
# elsewhere pip takes torch 2.13.0 from the index.
TORCH_SPEC ?= torch==2.13.0

.PHONY: install test bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet "$(TORCH_SPEC)"
	$(PIP) install --quiet -e ".[hf,dev]"
	touch $@

test: install
	$(PY) -m pytest -q

bench: install
	$(VENV)/bin/paged-context bench traces --out out/bench
	$(VENV)/bin/paged-context bench probes --out out/bench
	$(VENV)/bin/paged-context bench kv --default-model --out out/bench

clean:
	rm -rf $(VENV) out build *.egg-info .pytest_cache .hypothesis
