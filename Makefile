# Two commands do all set-up on a fresh machine (Python 3.10+):
#   make demo   creates .venv, installs the locked environment (requirements.lock: torch 2.13.0
#               CPU and every other package at a fixed version and hash) and cosalign, runs the
#               MiniCity demo
#   make test   the same set-up, then ruff and the test suite (2 pytest-xdist workers)
# Both are idempotent: with .venv up to date they go straight to the work.
#   make numbers  re-runs the demo and checks the README's numbers against it (tools/demo_numbers.py)
#   make figures  the same, then copies the demo's figure.png and features.png to docs/
#   make lock     re-resolves pyproject.toml into requirements.lock (tools/lock.py); commit it
VENV  := .venv
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml requirements.lock | python3 -c "import hashlib,sys;print(hashlib.sha1(sys.stdin.buffer.read()).hexdigest()[:12])")

.PHONY: demo test lint setup numbers figures lock
setup: $(STAMP)

$(STAMP): pyproject.toml requirements.lock
	python3 -m venv $(VENV)
	python3 tools/lock.py install $(VENV)
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/cosalign demo

test: $(STAMP)
	$(VENV)/bin/ruff check --quiet src tests benchmarks tools
	$(VENV)/bin/python -m pytest -n 2 --dist worksteal

numbers: $(STAMP)
	$(VENV)/bin/python tools/demo_numbers.py

figures: $(STAMP)
	$(VENV)/bin/python tools/demo_numbers.py --figures

lock: $(STAMP)
	$(VENV)/bin/python tools/lock.py refresh

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks tools
