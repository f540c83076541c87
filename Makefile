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

# The browser checks and the course site need JupyterLab, Selenium and nbconvert (the `browser` extra)
# and, for the checks, Debian's chromium + chromium-driver (installed through apt when we may).
.PHONY: test-browser book chromium
BROWSER_STAMP := $(VENV)/.installed-browser

$(BROWSER_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e ".[$(EXTRAS),browser]" "$(TORCH_SPEC)"
	@touch $(BROWSER_STAMP)

chromium:
	@if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ]; then SUDO=; elif sudo -n true 2>/dev/null; then SUDO="sudo -n"; \
	else echo "Chromium is missing: run   sudo apt-get install -y chromium chromium-driver"; exit 1; fi; \
	export DEBIAN_FRONTEND=noninteractive; \
	$$SUDO apt-get install -y -q chromium chromium-driver || \
	{ $$SUDO apt-get update -q && $$SUDO apt-get install -y -q chromium chromium-driver; }

book: $(BROWSER_STAMP)
	$(PY) notebooks/_book.py

test-browser: chromium book
	$(PY) -m pytest browser_tests
