# Two entry points (see README): `make demo` and `make test`.
PY     ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test install lint check bench clean validation seed-table

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test,fast]'
	touch $(STAMP)

install: $(STAMP)

## Reproduce the seed incident in simulation, with the mechanism and the proven fixes.
demo: install
	$(BIN)/tcpreuse simulate seed --fixes

lint: install
	$(BIN)/ruff check tcpreuse tests bench
	$(BIN)/mypy

## Install everything (system tools too, when root) and run the whole test suite.
test: install
	bash scripts/system-deps.sh
	$(MAKE) lint
	$(BIN)/pytest -q

## The fast tests (no slow or real-kernel ones): under a minute, for the edit-test loop.
check: install
	$(BIN)/pytest -q -m "not slow and not netns"

## The simulator against the running kernel and UML 6.1 (root): regenerates docs/validation.md
## Exits non-zero when a row disagrees; the file is written either way.
validation: install
	$(BIN)/tcpreuse validate --kernel host --kernel uml --suite full --markdown docs/validation.md

bench: install
	$(BIN)/python bench/sim_speed.py

## Regenerate docs/seed.md (the seed incident's variants side by side).
seed-table: install
	$(BIN)/python scripts/seed_table.py $$( [ "$$(id -u)" = 0 ] && echo --lab ) > docs/seed.md

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
