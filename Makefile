PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install serve test lint bench definitions clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

serve: install
	$(BIN)/fhir-server serve --demo --no-auth

test: install
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check fhir_server tests bench scripts
	$(BIN)/mypy

bench: install
	$(BIN)/python -m bench.run

# Regenerates fhir_server/definitions/data from the official R4 package (needs npm).
definitions: install
	$(BIN)/python scripts/generate_definitions.py

clean:
	rm -rf $(VENV) data .pytest_cache .mypy_cache
