# The verbs a person types. Every target shares one virtual environment at .venv.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: install lock test test-fast demo bench bench-scale replay cohort-demo metadata bootstrap template launch clean cohort-metadata \
        template-cohorts launch-cohorts schedule

# Installs from the lock (requirements-dev.txt = requirements.txt, which the image installs,
# plus the test and bench extras): every package pinned and hash-checked, so local runs and
# the Dataflow image run the same versions. Wheels only, but google-apitools (sdist only).
install: $(STAMP)

$(STAMP): setup.py requirements.txt requirements-dev.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --require-hashes --only-binary :all: --no-binary google-apitools -r requirements-dev.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

# Re-resolve the lock from setup.py (after changing a dependency there), for the image's
# Python (3.11, Linux x86_64), with the hashes PyPI publishes. Then `make install`.
UV_VERSION := 0.13.8
LOCK := $(VENV)/bin/uv pip compile --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
	--generate-hashes --custom-compile-command "make lock" --upgrade
lock:
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q uv==$(UV_VERSION)
	$(LOCK) setup.py templates/lock-build.in -o requirements.txt
	$(LOCK) setup.py templates/lock-build.in --extra test --extra bench -c requirements.txt -o requirements-dev.txt

# Unit, pipeline and integration tests. The fixtures start the Pub/Sub emulator and the
# Braze simulator themselves and stop them afterwards.
test: install
	$(PY) -m pytest -q -p no:cacheprovider tests

# The quick loop while changing code: unit and pipeline tests, no emulator, no end-to-end runs
# (under two minutes). `make test` stays the full suite, which CI runs.
test-fast: install
	$(PY) -m pytest -q -p no:cacheprovider -m "not integration and not slow" tests

# The streaming job on the local default: emulator + simulator + BundleBasedDirectRunner.
# ARGS="--events 500" changes the sample; job options go after --: ARGS="-- --braze_max_in_flight=4".
demo: install
	$(PY) -m local.demo $(ARGS)

# Speed, state, batching, latency and data points against baselines measured in the same run
# (about 7 minutes on 2 cores); results in bench/results.json.
bench: install
	$(PY) -m bench

# The scale curve up to 1,000,000 events (about 12 minutes, 12 GB of memory); kept in bench/results.json.
bench-scale: install
	$(PY) -m bench scale --scale-sizes 10000,100000,1000000

# Republish chosen dead letters, e.g.
#   make replay ARGS="--dead_letter_subscription=projects/P/subscriptions/S --input_topic=projects/P/topics/T --replay_topic=projects/P/topics/R --reason=braze_auth"
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

# Create what templates/env/$(ENV).json needs in its (empty) Google Cloud project: APIs,
# service accounts, bucket, image repository, topics, subscriptions, secrets, grants. Only
# what is missing; safe to run again. DRY_RUN=1 prints the gcloud commands instead.
bootstrap: install
	$(PY) -m templates.deploy bootstrap --env $(ENV) $(if $(DRY_RUN),--dry-run)

# Build the image (Cloud Build: launcher and workers) and the flex-template spec for
# templates/env/$(ENV).json. DRY_RUN=1 prints the gcloud commands instead. Not run in CI.
template: install
	$(PY) -m templates.deploy template --env $(ENV) $(if $(DRY_RUN),--dry-run)

# Upload $(ENV)'s syncs file and start the job; UPDATE=1 updates the running job in place,
# MAPPINGS="Old/Step=New/Step ..." carries renamed stateful steps' state across the update.
launch: install
	$(PY) -m templates.deploy launch --env $(ENV) $(if $(DRY_RUN),--dry-run) $(if $(UPDATE),--update) \
		$(foreach m,$(MAPPINGS),--mapping '$(m)')

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
