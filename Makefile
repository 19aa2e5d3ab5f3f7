# Two commands on a fresh machine:  make run  (Airflow on 127.0.0.1:8080)  and  make test.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
LF_VENV := .venv-lf
export AIRFLOW_HOME ?= $(CURDIR)/.airflow
export SIMIA_DATA_ROOT ?= $(CURDIR)/.data
# tau2's telecom policy files: ../shared/data/tau2-telecom when present (set it otherwise)
TAU2_GUESS := $(wildcard $(CURDIR)/../shared/data/tau2-telecom/main_policy.md)
ifneq ($(TAU2_GUESS),)
export TAU2_DATA_DIR ?= $(CURDIR)/../shared/data/tau2-telecom
endif
ifneq ($(wildcard $(CURDIR)/../shared/data),)
export SIMIA_REFERENCE_DATA ?= $(CURDIR)/../shared/data
endif
# a checkout of the reference scripts (zerowsw/Simia-WM-Exp) beside the project: make bench
# runs their 5-step pipeline on the same bytes as the data half
ifneq ($(wildcard $(CURDIR)/../Simia-WM-Exp/Simia_SFT/Tau2/process_data_pipeline.sh),)
export SIMIA_REFERENCE_SCRIPTS ?= $(CURDIR)/../Simia-WM-Exp
endif

.PHONY: run test venv lf-env bench clean

venv: $(VENV)/.installed
$(VENV)/.installed: requirements.txt requirements-dev.txt constraints.txt pyproject.toml
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check -r requirements.txt -r requirements-dev.txt -c constraints.txt
	$(VENV)/bin/pip install -q --disable-pip-version-check --no-deps -e .
	@touch $@

# the script is idempotent (a stamp of its inputs) and returns at once when done
lf-env:
	bash scripts/make_lf_env.sh $(LF_VENV)

run: venv
	$(VENV)/bin/python scripts/run_airflow.py

test: venv lf-env
	$(VENV)/bin/python -m pytest

bench: venv
	$(VENV)/bin/python benchmarks/bench_data_half.py
	$(VENV)/bin/python benchmarks/bench_llm.py
	$(VENV)/bin/python benchmarks/bench_calibration.py
	$(VENV)/bin/python benchmarks/bench_collection_cost.py
	$(VENV)/bin/python benchmarks/bench_placement.py

clean:
	rm -rf $(VENV) $(LF_VENV) .airflow .data .pytest_cache
