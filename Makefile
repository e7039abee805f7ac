# The project's commands. `make run` and `make test` set everything up first.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: run test lint bench setup format clean

setup:
	@VENV=$(VENV) EXTRAS=dev,docker,daytona,modal,kubernetes ./scripts/bootstrap.sh

run: setup
	$(VENV)/bin/sandboxctl serve

test: setup
	@./scripts/test-deps.sh
	$(PY) -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

format: setup
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: setup
	@./scripts/test-deps.sh
	$(PY) bench/create_exec.py
	$(PY) bench/snapshot.py
	$(PY) bench/session_ready.py
	$(PY) bench/docker_create.py
	$(PY) bench/pool_claim.py
	$(PY) bench/repo_image.py

clean:
	rm -rf .pytest_cache .mypy_cache .ruff_cache
