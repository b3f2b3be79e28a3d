# Parlor: `make run` starts a demo server; `make test` runs the whole suite.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
HOST   ?= 127.0.0.1
PORT   ?= 8080

.PHONY: run test lint typecheck bench fuzz clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed pyproject.toml
	$(PIP) install --quiet -e '.[test]'
	touch $@

run: $(VENV)/.installed
	@$(VENV)/bin/parlor demo --host $(HOST) --port $(PORT)
	@$(VENV)/bin/parlor serve --host $(HOST) --port $(PORT)

test: $(VENV)/.installed-test
	$(VENV)/bin/ruff check policy relay signaling tests bench
	$(VENV)/bin/mypy policy
	$(PY) -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

lint: $(VENV)/.installed-test
	$(VENV)/bin/ruff check policy relay signaling tests bench
	$(VENV)/bin/ruff format --check policy relay signaling tests bench

bench: $(VENV)/.installed-test
	$(PY) -m bench.sfu
	$(PY) bench/kill_latency.py

# The long fuzzing profile (tests/hardening/test_fuzz.py): at least FUZZ_FRAMES signaling
# frames, plus REST bodies and event-stream auths, against a live call; prints JSON counts.
FUZZ_FRAMES ?= 100000
fuzz: $(VENV)/.installed-test
	PARLOR_FUZZ_FRAMES=$(FUZZ_FRAMES) $(PY) -m pytest -q -p no:cacheprovider -s tests/hardening/test_fuzz.py

clean:
	rm -rf $(VENV) var .pytest_cache
