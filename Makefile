# Two commands from a fresh clone: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# What running needs (smtplb and uvloop), without the test, lint and browser tools.
RUNTIME := $(VENV)/.runtime
# `make fuzz`: examples per fuzz test (the bounded run in `make test` uses a few seconds).
FUZZ_EXAMPLES ?= 200000

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

# The fuzz tests with many more examples (hypothesis profile "fuzz"); prints inputs
# tried and crashes found per target.
fuzz: $(STAMP)
	SMTPLB_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(BIN)/pytest tests/fuzz -p no:cacheprovider \
		--hypothesis-profile=fuzz -s -q

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
