# Two commands on a fresh machine: `make run` (the main job) and `make test` (the test suite).
# Each creates .venv if missing, installs torch first (the CPU build, unless a torch is already
# importable, so a GPU user's CUDA build is kept), then the package with its extras.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
export HF_HUB_OFFLINE ?= 1

.PHONY: setup run test test-slow bench figures lint clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dev,dist]"
	touch $@

setup: $(VENV)/.installed

run: setup
	$(PY) experiments/full_clo.py $(ARGS)

test: setup
	$(PY) -m pytest -q -m "not slow" -n 2 --dist loadscope tests dynamics $(PYTEST_ARGS)

test-slow: setup
	$(PY) -m pytest -q -m slow tests dynamics $(PYTEST_ARGS)

bench: setup
	for b in benchmarks/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

figures: setup
	$(PY) paper_figures/make_all.py

lint: setup
	$(PY) -m ruff check dynamics experiments paper_figures benchmarks tests

clean:
	rm -rf $(VENV) runs build *.egg-info
