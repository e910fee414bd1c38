# localattn developer entry points. `make setup` creates .venv with the whole stack (idempotent).
VENV ?= .venv
PY := $(VENV)/bin/python
# Two pytest-xdist workers (the suite: about 830 tests, about 14 minutes on 2 cores; tests marked with an
# xdist_group share one worker); PYTEST_ARGS= runs serially.
PYTEST_ARGS ?= -n 2 --dist loadgroup

.PHONY: setup test lint demo bench-attention

setup:
	bash tools/setup_env.sh

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

# ruff (pyflakes, pycodestyle, isort, bugbear; settings in ruff.toml), installed by `make setup`
# (requirements/tests.txt). LINT_ARGS=--fix applies the automatic fixes.
LINT_ARGS ?=
lint:
	@test -x $(VENV)/bin/ruff || { echo "$(VENV)/bin/ruff not found: run 'make setup' first" >&2; exit 1; }
	$(VENV)/bin/ruff check $(LINT_ARGS) .

bench-attention: setup
	$(PY) tools/analysis_tools/benchmark_attention.py --suite all

# End-to-end CPU demo: synthetic data -> train NAT UPerNet + NAT Mask R-CNN -> mIoU (single scale and
# multi-scale + flip), box/mask mAP, pictures, curves -> work_dirs/demo/summary.md. DEMO_ARGS=--quick
# runs a few iterations only.
DEMO_ARGS ?=
demo: setup
	$(PY) tools/demo.py $(DEMO_ARGS)
