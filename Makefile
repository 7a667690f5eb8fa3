# The verbs a person types. Every target shares one virtual environment at .venv.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: install test demo bench replay cohort-demo metadata template launch clean

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
# ARGS="--events 500" changes the sample; job options go after --: ARGS="-- --braze_max_in_flight=4".
demo: install
	$(PY) -m local.demo $(ARGS)

# Speed, batching, latency and data points against baselines measured in the same run.
bench: install
	$(PY) -m bench

# Republish chosen dead letters, e.g.
#   make replay ARGS="--dead_letter_subscription=projects/P/subscriptions/S --input_topic=projects/P/topics/T --replay_topic=projects/P/topics/R --reason=braze_auth"
replay: install
	$(PY) -m pipeline.replay $(ARGS)

# The cohort-sync job against the Braze simulator: a full sync, then an incremental one.
cohort-demo: install
	$(PY) -m local.cohort_demo

ENV ?= dev

# Regenerate templates/metadata.json from pipeline/options.py (tests fail while it is stale).
metadata: install
	$(PY) -m templates.build_metadata

# Build the launcher image (Cloud Build) and the flex-template spec for templates/env/$(ENV).json.
# DRY_RUN=1 prints the gcloud commands instead. Needs gcloud and a GCP project; not run in CI.
template: install
	$(PY) -m templates.deploy template --env $(ENV) $(if $(DRY_RUN),--dry-run)

# Upload $(ENV)'s syncs file and start the job; UPDATE=1 updates the running job in place.
launch: install
	$(PY) -m templates.deploy launch --env $(ENV) $(if $(DRY_RUN),--dry-run) $(if $(UPDATE),--update)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
