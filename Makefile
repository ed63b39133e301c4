# frcnn_edu — two commands: `make demo` runs the main job, `make test` runs every test.
# While editing: `make test-fast` (the tests not marked slow, under a minute) and `make lint`.
# Each target creates or updates the virtual environment in .venv by itself.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test test-fast lint test-notebooks test-browser lab bench notebook-outputs book apps assignments clean

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

# Everything but the tests marked @pytest.mark.slow and the notebooks: under a minute on 2 cores
# (nbval's plugin is not loaded: importing it alone takes ~4 s).
test-fast: $(STAMP)
	$(PY) -m pytest tests -m "not slow" -x -q -p no:cacheprovider -p no:nbval --ignore=tests/browser

# ruff (rules in pyproject.toml [tool.ruff]) and mypy over the core modules ([tool.mypy] files);
# both always run, and the target fails if either finds something.
lint: $(STAMP)
	$(VENV)/bin/ruff check frcnn_edu tests bench tools; ruff=$$?; $(PY) -m mypy && exit $$ruff

# The real-browser test needs Debian's Chromium and the playwright package (never
# `playwright install`: the test launches /usr/bin/chromium itself).
test-browser: $(STAMP)
	test -x /usr/bin/chromium || { (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) || \
		echo "could not install chromium: the browser test will be skipped"; }
	$(PY) -c "import playwright" 2>/dev/null || $(PY) -m pip install --quiet playwright 2>&1 | grep -v "^WARNING: Location" || true
	FRCNN_EDU_BROWSER_ARTIFACTS=outputs/browser $(PY) -m pytest tests/browser -p no:cacheprovider -rs

# The four explorers as Voilà web apps (apps/*.ipynb, no code shown), one kernel per open page,
# shut down when the page closes; settings in apps/voila.py. Open http://localhost:$(APPS_PORT)/
APPS_PORT ?= 8866
apps: $(STAMP)
	$(VENV)/bin/voila apps --port=$(APPS_PORT) --Voila.config_file_paths=apps

lab: $(STAMP)
	$(VENV)/bin/jupyter lab notebooks

bench: $(STAMP)
	$(PY) -m bench.run $(BENCH_ARGS)

# Re-run every notebook and store the outputs of the cells tagged nbval-check-output (the ones
# `make test` compares); all other cells are stripped.
notebook-outputs: $(STAMP)
	$(PY) tools/refresh_notebook_outputs.py

# The course as a static website, offline: build/book/html/index.html (docs/book/build.py; every
# notebook is run, cached in build/book/jupyter_cache; any Sphinx warning fails the build).
book: $(STAMP)
	$(PY) docs/book/build.py --strict

# The six exercises as an nbgrader course (tools/make_assignments.py): source/ with the solutions,
# release/ for the students; docs/teaching.md, "Assignments with nbgrader". `make clean` deletes
# build/: keep a real course (submissions, gradebook.db) elsewhere with ASSIGNMENTS_DIR=...
ASSIGNMENTS_DIR ?= build/assignments
assignments: $(STAMP)
	$(PY) tools/make_assignments.py --course-dir $(ASSIGNMENTS_DIR)

clean:
	rm -rf $(VENV) build *.egg-info
