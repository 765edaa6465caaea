# `make book` and `make test` each create .venv on first use.
VENV   := .venv
PYTHON := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
export LD_PROGRESS ?= 0
export PYDEVD_DISABLE_FILE_VALIDATION := 1

.PHONY: book test bench clean

$(STAMP): pyproject.toml
	test -x $(PYTHON) || python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip
	$(PYTHON) -m pip install --quiet -e .
	touch $(STAMP)

book: $(STAMP)
	$(VENV)/bin/jupyter-book build . -W -n --keep-going
	@$(PYTHON) -m learning_dynamics.timings _build/.jupyter_cache || true

test: $(STAMP)
	$(PYTHON) -m pytest

bench: $(STAMP)
	$(PYTHON) bench/run.py

clean:
	rm -rf _build
