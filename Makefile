# The verbs a person types. Every target shares one virtual environment at .venv.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: install test demo bench clean

install: $(STAMP)

$(STAMP): setup.py
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,bench]'
	touch $(STAMP)

# Unit, pipeline and integration tests. The fixtures start the Pub/Sub emulator and the
# Braze simulator themselves and stop them afterwards.
test: install
	$(PY) -m pytest -q -p no:cacheprovider tests

# The streaming job on the local default: emulator + simulator + BundleBasedDirectRunner.
demo: install
	$(PY) -m local.demo

bench: install
	$(PY) -m bench

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
