# The two commands of the README: `make demo` and `make test`. Each creates .venv when missing.
# torch is installed first and pinned through constraints.txt, so no later step can swap the
# CPU build for a CUDA one (see README, "Installing").

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo test clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -c constraints.txt torch
	$(PY) -m pip install -q --disable-pip-version-check -c constraints.txt -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/treegrpo demo

test: $(STAMP)
	$(PY) -m mypy
	OMP_NUM_THREADS=1 $(PY) -m pytest -q

clean:
	rm -rf $(VENV) runs .pytest_cache
