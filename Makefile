# Two commands from a fresh clone: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# What running needs (smtplb and uvloop), without the test, lint and browser tools.
RUNTIME := $(VENV)/.runtime
# `make fuzz`: examples per fuzz test (`make test` runs a few hundred each, a few seconds).
FUZZ_EXAMPLES ?= 10000

.PHONY: run test system-tools lint typecheck unit integration fuzz bench bench-quick \
	bench-scale bench-profile clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(RUNTIME): pyproject.toml | $(VENV)/bin/python
	$(BIN)/python -m pip install -q -e '.[fast]'
	touch $(RUNTIME)

$(STAMP): pyproject.toml | $(VENV)/bin/python
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP) $(RUNTIME)

run: $(RUNTIME)
	$(BIN)/smtplb run $(if $(wildcard smtplb.toml),-c smtplb.toml)

# The suite's real peers (smtp-sink, swaks, chromium, …): installed with apt when
# root, else it stops at once with the command to run. Checked before anything else.
system-tools:
	bash .ci/system-tools

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy

test: system-tools lint typecheck
	$(BIN)/pytest

unit: $(STAMP)
	$(BIN)/pytest tests/unit

integration: system-tools $(STAMP)
	$(BIN)/pytest tests/integration

# The fuzz tests with many more examples: prints the inputs tried and the crashes found
# per target, and puts them in bench/RESULTS.md (section Fuzz). Fails on a crash.
fuzz: $(STAMP)
	SMTPLB_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) SMTPLB_FUZZ_REPORT=$(VENV)/fuzz-report.md \
		$(BIN)/pytest tests/fuzz -p no:cacheprovider -q; status=$$?; \
		$(BIN)/python bench/fuzz_results.py $(VENV)/fuzz-report.md; exit $$status

bench: $(STAMP)
	$(BIN)/python bench/run.py

bench-quick: $(STAMP)
	$(BIN)/python bench/run.py --quick

bench-scale: $(STAMP)
	$(BIN)/python bench/scale.py

bench-profile: $(STAMP)
	$(BIN)/python bench/profile_smtplb.py

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
