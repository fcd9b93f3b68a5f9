# make demo: the main job on the embedded default.  make test: every test.  make test-fast: the tests that
# start no Ray cluster and no server, for the inner loop.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test test-fast lint bench constraints clean

demo: $(STAMP)
	$(PY) sweeps/launch.py --dataset digits --profile demo

test: $(STAMP)
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not ray and not server and not process and not inception"

lint: $(STAMP)
	$(VENV)/bin/ruff check fpa_core sweeps tests benchmarks

bench: $(STAMP)
	$(PY) benchmarks/bench_rules.py

# The venv is (re)built when the pins or the project's metadata change.
$(STAMP): constraints.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -c constraints.txt -e '.[fid,sweep,dev]'
	touch $(STAMP)

constraints: $(STAMP)
	{ head -n 2 constraints.txt; $(PY) -m pip freeze --exclude-editable | grep -v '^fast-weight-painters'; } > constraints.new
	mv constraints.new constraints.txt

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
