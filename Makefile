# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo test fashion clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
# the built-in co2 series is read from statsmodels' data files (its code and dependencies are not needed)
	$(PY) -m pip install -q --no-deps statsmodels
	touch $(STAMP)

demo: setup
	$(VENV)/bin/deepworks train examples/configs/quickstart.yaml

test: setup
	$(PY) -m pytest -q

fashion: setup
	$(VENV)/bin/deepworks train examples/configs/fashion-mnist-cnn.yaml

clean:
	rm -rf $(VENV) runs .pytest_cache
