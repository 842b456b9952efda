# The two commands a newcomer needs: `make serve` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch==2.13.0 resolves to the CUDA build from PyPI on a Linux GPU host (and to a local CPU build where one is
# offered); pass e.g. TORCH="torch --index-url https://download.pytorch.org/whl/cpu" for a CPU-only host.
TORCH ?= torch==2.13.0
RERANK_DEFAULT_MODEL ?= BAAI/bge-reranker-base
export RERANK_DEFAULT_MODEL
PORT ?= 8000

.PHONY: setup serve test build clean

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -r requirements-dev.txt
	touch $@

# Imports the default model when the store lacks it (models/<name>/ first, else the Hub; on a CPU host for the fastest
# path of its CPU that keeps rankings, --backend auto), then serves on :$(PORT)
# (`make serve PORT=8001`). A venv that was set up serves as it is, even when requirements*.txt changed since (a
# `git pull`): updating it needs the package index, which an offline host lacks; it says so, and `make setup` updates.
serve:
	@test -f $(VENV)/.installed || $(MAKE) setup
	@for file in requirements.txt requirements-dev.txt; do \
		if [ $$file -nt $(VENV)/.installed ]; then \
			echo "make serve: $$file changed since $(VENV) was set up; serving with $(VENV) as it is (run make setup to update it, which needs the package index)"; \
		fi; \
	done
	$(BIN)/python import_models.py --if-missing --backend auto "$(RERANK_DEFAULT_MODEL)"
	$(BIN)/bentoml serve service:Reranker --port $(PORT)

# The browser tests (tests/test_playground.py) drive Debian's Chromium; without it they skip (under CI they fail).
# Test files run on TEST_WORKERS processes (pytest-xdist), a file's tests in one of them, so that a module's server is
# started once: most tests wait on a server or a subprocess, so two processes finish sooner even on two cores.
TEST_WORKERS ?= 2
test: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	@command -v chromium >/dev/null 2>&1 || test -x /usr/bin/chromium || \
		echo "make test: no Chromium, so the browser tests (tests/test_playground.py) will be SKIPPED: apt-get install chromium"
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile

build: setup
	$(BIN)/bentoml build

clean:
	rm -rf $(VENV) .pytest_cache
