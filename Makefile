# `make demo` and `make test` work on a fresh machine: the first use creates .venv,
# installs torch 2.13.0 (CPU) first, then this package with its extras.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python

.PHONY: demo test lint docs docs-serve bench-convergence bench-networks bench-speed clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

demo: $(VENV)/.installed
	$(PY) -m lagrange_opt.demo

# On every core (pytest-xdist): about 2 min 30 s on 2 cores; add -n 0 to run in one process.
test: $(VENV)/.installed
	$(PY) -m pytest tests lagrange_opt --doctest-modules -n auto

# The convergence benchmark; QUICK=1 for the short run CI does.
bench-convergence: $(VENV)/.installed
	$(PY) -m benchmarks.convergence --out benchmark-results/convergence $(if $(QUICK),--quick)

# The network suite (per-sample and rate constraints on minibatches); QUICK=1 for CI's run.
bench-networks: $(VENV)/.installed
	$(PY) -m benchmarks.networks --out benchmark-results/networks $(if $(QUICK),--quick)

# The speed benchmark (run it on a quiet machine).
bench-speed: $(VENV)/.installed
	$(PY) -m benchmarks.speed --out benchmark-results/speed $(if $(QUICK),--quick)

# The documentation site (executes the tutorials): build it into site/, or serve it locally.
docs: $(VENV)/.installed
	$(VENV)/bin/mkdocs build --strict

docs-serve: $(VENV)/.installed
	$(VENV)/bin/mkdocs serve

lint: $(VENV)/.installed
	$(PY) -m ruff check lagrange_opt tests benchmarks examples tools
	$(PY) -m mypy lagrange_opt

clean:
	rm -rf $(VENV) site .pytest_cache .mypy_cache .ruff_cache
