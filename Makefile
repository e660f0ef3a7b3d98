# recsys_emb: the two commands a new user runs are `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_ROWS ?= 300000

.PHONY: install demo test test-all bench ext bench-kernels clean-venv

install:
	@bash scripts/install.sh

demo: install
	$(PY) examples/criteo_quickstart.py --rows $(DEMO_ROWS) --out runs/demo

test: install
	$(PY) -m pytest -m "not slow" -q

test-all: install
	$(PY) -m pytest -q

bench: install
	$(PY) benchmarks/train_throughput.py
	$(PY) benchmarks/criteo_head.py

# Rebuild the compiled kernels recsys_emb._C in place after editing csrc/ (docs/kernels.md).
ext:
	$(PY) setup.py build_ext --inplace

bench-kernels: install
	OMP_NUM_THREADS=$${THREADS:-1} $(PY) benchmarks/kernels.py --threads $${THREADS:-1}

clean-venv:
	rm -rf $(VENV)
