# One command per chore. `make test` builds its own virtual environment first.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3

.PHONY: install test lint bench bench-quick clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

install: $(VENV)/.installed

test: install
	scripts/postgres-up
	scripts/chromium-up
	BARGE_TEST_BROWSER=required $(PY) -m pytest

lint: install
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/mypy src

bench: install
	$(PY) bench/dispatch.py --sizes 1000,20000,50000
	$(PY) bench/saturation.py
	$(PY) bench/memory.py --sizes 1000,10000,50000
	$(PY) bench/million.py --requests 1000000
	$(PY) bench/small_batches.py --batches 200 --requests 10
	$(PY) bench/api_latency.py --requests 50000
	$(PY) bench/cluster.py --requests 20000 --limited-requests 3000
	$(PY) bench/routing.py --requests 20000
	$(PY) bench/pacing.py --tokens-per-minute 60000 --seconds 60
	$(PY) bench/coalescing.py --lines 20000

bench-quick: install
	$(PY) bench/dispatch.py --sizes 1000,5000 --rounds 1
	$(PY) bench/saturation.py --requests 500 --rounds 1
	$(PY) bench/small_batches.py --batches 40 --requests 10

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .mypy_cache .ruff_cache
