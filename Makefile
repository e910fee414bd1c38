# localattn developer entry points. `make setup` creates .venv with the whole stack (idempotent).
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: setup test demo bench-attention

setup:
	bash tools/setup_env.sh

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

bench-attention: setup
	$(PY) tools/analysis_tools/benchmark_attention.py --suite all
