# The two quick-start commands: `make demo` and `make test`. Both create or reuse .venv.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Test files run on this many workers (pytest-xdist), whole files each.
TEST_WORKERS ?= 2
STAMP := $(VENV)/.lrerr-installed
DEMO_DIR ?= demo-out

.PHONY: demo test lint bench clean-demo

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	PATH="$(abspath $(VENV))/bin:$$PATH" bash scripts/demo.sh $(DEMO_DIR)

test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile

lint: $(STAMP)
	$(PY) -m ruff check .

bench: $(STAMP)
	$(PY) benchmarks/bench_extract.py
	$(PY) benchmarks/bench_shards.py
	$(PY) benchmarks/bench_train.py mae
	$(PY) benchmarks/bench_train.py det
	$(PY) benchmarks/bench_train.py moco
	$(PY) benchmarks/bench_scripts.py

clean-demo:
	rm -rf $(DEMO_DIR)
