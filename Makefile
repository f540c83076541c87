# mednext_lite: every target creates .venv when missing, so `make demo` and `make test`
# are the whole set-up on a fresh machine. Override the interpreter or the torch pin:
#   make test PYTHON=python3.12 TORCH_SPEC="torch==2.13.0"
PYTHON     ?= python3
VENV       ?= .venv
TORCH_SPEC ?= torch==2.13.0
EXTRAS     ?= notebooks,dev
PY         := $(VENV)/bin/python
STAMP      := $(VENV)/.installed

.PHONY: venv demo test test-fast notebooks bench lint clean

venv: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[$(EXTRAS)]" "$(TORCH_SPEC)"
	@touch $(STAMP)

demo: $(STAMP)
	$(PY) -m mednext_lite.demo

test: $(STAMP)
	$(PY) -m pytest

test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow and not notebooks"

notebooks: $(STAMP)
	$(PY) -m pip install --quiet -e ".[$(EXTRAS),lab]" "$(TORCH_SPEC)"
	$(VENV)/bin/jupyter lab notebooks/

bench: $(STAMP)
	$(PY) benchmarks/bench_model.py

lint: $(STAMP)
	$(PY) -m pip install --quiet "ruff==0.17.6"
	$(VENV)/bin/ruff check mednext_lite tests benchmarks data_scripts

clean:
	rm -rf build runs .pytest_cache
