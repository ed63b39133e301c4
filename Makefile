# frcnn_edu — two commands: `make demo` runs the main job, `make test` runs every test.
# Each target creates or updates the virtual environment in .venv by itself.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test test-fast test-notebooks test-browser lab bench notebook-outputs clean

# The venv is rebuilt only when pyproject.toml changes (the stamp is newer otherwise).
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
	$(PY) -m pip install --quiet -e '.[dev]' 2>&1 | grep -v "^WARNING: Location" || true
	$(PY) -c "import frcnn_edu, torch, torchvision, nbval"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/frcnn-edu demo

test: $(STAMP)
	$(PY) -m pytest tests notebooks --nbval-lax --nbval-current-env -p no:cacheprovider \
		--ignore=tests/browser --durations=15

test-notebooks: $(STAMP)
	$(PY) -m pytest notebooks --nbval-lax --nbval-current-env -p no:cacheprovider

test-fast: $(STAMP)
	$(PY) -m pytest tests -x -q

# The real-browser test needs Debian's Chromium and the playwright package (never
# `playwright install`: the test launches /usr/bin/chromium itself).
test-browser: $(STAMP)
	test -x /usr/bin/chromium || { (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) || \
		echo "could not install chromium: the browser test will be skipped"; }
	$(PY) -c "import playwright" 2>/dev/null || $(PY) -m pip install --quiet playwright 2>&1 | grep -v "^WARNING: Location" || true
	FRCNN_EDU_BROWSER_ARTIFACTS=outputs/browser $(PY) -m pytest tests/browser -p no:cacheprovider -rs

lab: $(STAMP)
	$(VENV)/bin/jupyter lab notebooks

bench: $(STAMP)
	$(PY) -m bench.run $(BENCH_ARGS)

# Re-run every notebook and store the outputs of the cells marked NBVAL_CHECK_OUTPUT (the ones
# `make test` compares); all other cells are stripped.
notebook-outputs: $(STAMP)
	$(PY) tools/refresh_notebook_outputs.py

clean:
	rm -rf $(VENV) build *.egg-info
