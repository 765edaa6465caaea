# `make book` and `make test` each create .venv on first use.
SHELL  := bash
VENV   := .venv
PYTHON := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
export LD_PROGRESS ?= 0
export PYDEVD_DISABLE_FILE_VALIDATION := 1

.PHONY: book test bench notebooks seeds clean

$(STAMP): pyproject.toml
	test -x $(PYTHON) || python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip
	$(PYTHON) -m pip install --quiet -e .
	touch $(STAMP)

# The execution cache keys on notebook code only, so a change to the library or
# the pins clears it: the book never shows a figure the current code would not draw.
CODE_HASH = $(shell find lib -name '*.py' -print0 | sort -z | xargs -0 cat pyproject.toml | sha256sum | cut -c1-16)

book: $(STAMP)
	@mkdir -p _build
	@if [ "$$(cat _build/.code-hash 2>/dev/null)" != "$(CODE_HASH)" ]; then \
		rm -rf _build/.jupyter_cache _build/jupyter_execute _build/.doctrees _build/html; \
		echo "library or pins changed: execution cache cleared"; fi
	$(VENV)/bin/jupyter-book build . -W --keep-going
	@echo $(CODE_HASH) > _build/.code-hash
	@$(PYTHON) -m learning_dynamics timings

test: $(STAMP)
	$(PYTHON) -m pytest

# Re-execute every chapter in place at the book preset (the outputs nbval compares), timing each.
notebooks: $(STAMP)
	@for nb in notebooks/*.ipynb; do \
		TIMEFORMAT="$$nb: %R s"; time $(VENV)/bin/jupyter execute --inplace --timeout=600 $$nb || exit 1; done

# Every chapter's claims at seeds 0-9, at smoke and at book (make test runs the smoke half).
seeds: $(STAMP)
	@for preset in smoke book; do for nb in notebooks/*.ipynb; do \
		$(PYTHON) -m learning_dynamics.seeds $$(basename $$nb .ipynb) --preset $$preset --seeds 0-9 || status=1; done; done; exit $${status:-0}

bench: $(STAMP)
	$(PYTHON) bench/run.py

clean:
	rm -rf _build
