# Quick start:  make demo   (build the built-in dataset, train every stage on CPU or GPU, write the report)
#               make test   (the test suite)
# Both set up first: a .venv with requirements.txt and the system packages of scripts/setup_system.sh.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TEST_WORKERS ?= 2

.PHONY: setup system demo data test benchmark clean-demo

setup: $(VENV)/.installed system

$(VENV)/.installed: requirements.txt requirements-eval.txt requirements-test.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q -r requirements-eval.txt
	$(PY) -m pip install -q -r requirements-test.txt
	touch $@

system:
	bash scripts/setup_system.sh

data: setup
	$(PY) scripts/make_demo_data.py --out data/demo

demo: setup
	bash scripts/demo.sh

test: setup  # pytest-xdist workers of one thread each: 16.5 -> 8.8 minutes on 2 AVX2 cores (234 tests)
	bash scripts/setup_system.sh --test
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -n $(TEST_WORKERS) --dist worksteal tests

benchmark: setup
	$(PY) scripts/benchmark.py

clean-demo:
	rm -rf runs/demo
