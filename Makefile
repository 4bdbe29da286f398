# Fresh-machine entry points: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.medseg-installed

.PHONY: install system-deps demo test lint clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# torch first: the pinned CPU wheel here; on other machines set TORCH_SPEC to your platform's build.
$(STAMP): $(PY) pyproject.toml
	$(PIP) install -q "$(TORCH_SPEC)"
	$(PIP) install -q -e ".[dev,export]"
	touch $(STAMP)

install: $(STAMP)

# Orthanc, dicom3tools, Chromium + chromedriver and the MONAI Label venv (its own torch/monai stack,
# cached outside the clone).
system-deps:
	@if [ "$$(id -u)" = 0 ]; then bash workflows/setup_ci.sh; \
	else echo "not root: run 'sudo bash workflows/setup_ci.sh' once for the serving tests (skipped without it)"; fi

demo: install
	$(VENV)/bin/medseg demo

# Every generated bundle must be what its plans/plan.json renders (bundles without a plan are reported).
test: install system-deps
	$(VENV)/bin/medseg bundle check $(wildcard bundles/*/)
	$(PY) -m pytest -q -x --timeout=1800 $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check medseg tests benchmarks

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
