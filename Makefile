# The verbs a person types. Every target shares one virtual environment at .venv.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: install test demo bench replay cohort-demo metadata template launch clean cohort-metadata template-cohorts \
        launch-cohorts schedule

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

# Speed, batching, latency and data points against baselines measured in the same run.
bench: install
	$(PY) -m bench

# Republish chosen dead letters, e.g.
#   make replay ARGS="--dead_letter_subscription=projects/P/subscriptions/S --input_topic=projects/P/topics/T --reason=braze_auth"
replay: install
	$(PY) -m pipeline.replay $(ARGS)

# The cohort-sync job against the stand-ins (Braze simulator, Amplitude stand-in, Pub/Sub emulator):
# the streaming mode over the cohort feed, then a download-based sync (full, then a delta).
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

# The cohort job (templates/cohorts_deploy.py, templates/env/cohorts/$(ENV).json). Its two template
# specs run the image `make template` builds; DRY_RUN=1 prints the gcloud commands instead.
cohort-metadata: install
	$(PY) -m templates.cohorts_metadata

template-cohorts: install
	$(PY) -m templates.cohorts_deploy template --env $(ENV) $(if $(DRY_RUN),--dry-run)

# Upload $(ENV)'s cohorts file and start the streaming mode (Amplitude's Pub/Sub cohort feed).
launch-cohorts: install
	$(PY) -m templates.cohorts_deploy launch --env $(ENV) $(if $(DRY_RUN),--dry-run) $(if $(UPDATE),--update)

# Create or update one Cloud Scheduler job per scheduled sync (downloads and reconciles).
schedule: install
	$(PY) -m templates.cohorts_deploy schedule --env $(ENV) $(if $(DRY_RUN),--dry-run)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
