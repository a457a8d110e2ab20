# mechwidgets: set-up, demo, tests and benchmarks. Every target builds what it needs from nothing.
#   make demo   JupyterLab on demo_notebooks/ with the zoo models (http://127.0.0.1:8888)
#   make test   lint, type checks, vitest, then pytest (unit, browser, demo notebooks)
#   make bench  benchmarks/ (ratios against TransformerLens in the same process)
#   make demos  re-execute the committed demo notebooks (outputs, widget state, pictures)
#   make dev    editable install + esbuild watch with anywidget hot reload

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
TORCH  := torch==2.13.0
PORT   ?= 8888
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: demo demos test test-tl4 lint typecheck js-test pytest bench dev chromium clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	# the CPU build of torch first: a plain `torch` requirement would pull several GB of CUDA
	$(BIN)/pip install -q $(TORCH)

node_modules/.stamp: package.json package-lock.json
	# `npm ci` rejects this lock file (npm 11 drops other platforms' optional rollup packages from it)
	npm install --no-audit --no-fund --loglevel=error
	touch $@

mechwidgets/static/.stamp: node_modules/.stamp js/build.mjs $(wildcard js/*.ts js/lib/*.ts js/lib/*.css)
	npm run --silent build
	touch $@

$(VENV)/.stamp: $(BIN)/python pyproject.toml mechwidgets/static/.stamp
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "installing Chromium from Debian"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; }

demo: $(VENV)/.stamp
	@echo "JupyterLab: http://127.0.0.1:$(PORT)/lab/tree/01_attention.ipynb"
	cd demo_notebooks && ../$(BIN)/jupyter lab --ip=127.0.0.1 --port=$(PORT) --no-browser \
	  --ServerApp.token='' --ServerApp.password='' --allow-root

# re-execute demo_notebooks/ (committed executed, so GitHub and nbviewer show them) offline
demos: $(VENV)/.stamp mechwidgets/static/.stamp
	$(BIN)/python scripts/execute_demos.py

lint: $(VENV)/.stamp
	$(BIN)/ruff check
	$(BIN)/mypy

typecheck: node_modules/.stamp
	npx --no-install tsc --noEmit

js-test: node_modules/.stamp
	npx --no-install vitest run

pytest: $(VENV)/.stamp chromium
	$(BIN)/python -m pytest -q -ra

# TransformerLens 4.x (TransformerBridge) in its own venv: the core tests run there too.
$(VENV)-tl4/.stamp: pyproject.toml
	$(PYTHON) -m venv $(VENV)-tl4
	$(VENV)-tl4/bin/pip install -q $(TORCH)
	$(VENV)-tl4/bin/pip install -q -e ".[nnsight]" "transformer_lens>=4" pytest pytest-timeout
	touch $@

# the test files that run under TransformerLens 4.x too (version-specific tests skip themselves)
TL4_TESTS := $(wildcard tests/test_model.py tests/test_attention.py tests/test_widget_protocol.py tests/test_zoo.py tests/test_patching.py tests/test_features.py tests/test_circuits.py tests/test_circuits_tl4.py tests/test_stale.py tests/test_lens.py tests/test_fuzz.py tests/test_bad_input.py tests/test_properties.py tests/test_backends.py)

test-tl4: $(VENV)-tl4/.stamp mechwidgets/static/.stamp
	$(VENV)-tl4/bin/python -m pytest -q -ra -m "not browser and not notebooks" -p no:cacheprovider $(TL4_TESTS)

test: lint typecheck js-test test-tl4 pytest

bench: $(VENV)/.stamp
	$(BIN)/python -m benchmarks.run

dev: $(VENV)/.stamp
	@echo "esbuild watching js/; widgets reload live (ANYWIDGET_HMR=1) in: ANYWIDGET_HMR=1 make demo"
	npm run dev

clean:
	rm -rf $(VENV) $(VENV)-tl4 node_modules mechwidgets/static build dist
