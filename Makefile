# wsseg_nb: `make run` (the demo chain, headless) and `make test` each set up .venv themselves.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PROFILE ?= demo
RUN_DIR ?= runs/$(PROFILE)
export PATH := $(abspath $(VENV))/bin:$(PATH)
export PYTHONUNBUFFERED := 1

.PHONY: venv browser run test unit nbval bench sync notebooks clean

venv: $(STAMP)
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e ".[test]"
	touch $(STAMP)

run: venv            ## the whole notebook chain, headless (papermill), demo profile by default
	$(PY) -m wsseg_nb run --profile $(PROFILE) --run-dir $(RUN_DIR)

test: venv browser   ## unit tests, notebook pairing, then nbval on the committed notebooks and the browser test
	$(PY) -m pytest -q tests
	$(PY) -m pytest -q --nbval-lax --nbval-current-env notebooks/

browser:             ## Debian's chromium for the browser test of notebook 04 (apt-get as root; else the test skips)
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
	  && apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; } \
	  || echo "warning: no chromium here (install it as root); notebooks/test_explorer_browser.py will be skipped"

unit: venv
	$(PY) -m pytest -q tests

bench: venv          ## speed and memory figures quoted in the README (installs the peer CAM libraries)
	$(PY) -m pip install -q -c constraints.txt -e ".[bench]"
	$(PY) -m benchmarks.run_all

sync: venv           ## regenerate each .ipynb's code from its .py (outputs kept)
	$(PY) -m jupytext --sync notebooks/*.py

notebooks: venv      ## run the chain and commit its executed notebooks (outputs) next to the .py sources
	$(PY) -m wsseg_nb run --profile demo --run-dir runs/demo --export-notebooks

clean:
	rm -rf runs .pytest_cache
