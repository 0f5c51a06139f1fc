# The two commands of the README: `make run` and `make test`. Each sets itself up on a fresh
# machine (virtual environment, install, services) so nothing depends on what a session did by hand.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint venv clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

## Plan every example pipeline of configs/ (later: start the whole system).
run: $(STAMP)
	@for f in configs/pipelines/*.yml; do \
		echo "== $$f (push to main)"; \
		$(BIN)/ci-queue plan "$$f" --branch main || exit $$?; \
	done

## The whole test suite, lint first.
test: $(STAMP)
	$(BIN)/ruff check ci_queue workers tests bench
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check ci_queue workers tests bench

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
