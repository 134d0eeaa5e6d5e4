# Two commands do all set-up on a fresh machine (Python 3.10+):
#   make demo   creates .venv, installs torch 2.13.0 (CPU) and cosalign, runs the MiniCity demo
#   make test   the same set-up, then ruff and the test suite
# Both are idempotent: with .venv up to date they go straight to the work.
VENV  := .venv
STAMP := $(VENV)/.installed-$(shell python3 -c "import hashlib;print(hashlib.sha1(open('pyproject.toml','rb').read()).hexdigest()[:12])")

.PHONY: demo test lint setup
setup: $(STAMP)

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	# torch first and pinned: an unpinned torch requirement would pull a multi-GB CUDA build
	$(VENV)/bin/pip install --quiet torch==2.13.0
	$(VENV)/bin/pip install --quiet -e '.[dev]'
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/cosalign demo

test: $(STAMP)
	$(VENV)/bin/ruff check --quiet src tests benchmarks
	$(VENV)/bin/python -m pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
