# Two commands do all the set-up on a fresh machine:
#   make demo   - train on the embedded default data, convert, bank, score, report (demo-out/)
#   make test   - the test suite
# Both create and reuse the one virtual environment at .venv/.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test bench venv clean

venv: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[device,trainer,lof,panel,dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/anomaly-train demo --out demo-out

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) scripts/bench/bench_e2e.py

clean:
	rm -rf demo-out .pytest_cache
