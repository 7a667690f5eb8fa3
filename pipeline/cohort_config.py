"""The cohorts file: named Braze targets, the cohort syncs that use them, where membership comes
from, and notifications.

Loaded and validated once, when the job is built, to the same standard as the syncs file
(``pipeline.config``): every problem at once, each ``path: what is wrong``, raised as
``ConfigError``; keys are references (``env:NAME`` / Secret Manager), never values, and never
quoted; endpoints limited to the Braze REST hosts unless ``allow_insecure_endpoints``.
The rules live in ``pipeline.cohort_config_rules``; the model they build (``CohortConfig`` and
its parts) is ``transforms.cohorts.model``, re-exported here; the JSON Schema for editors is
``pipeline/cohorts.schema.json`` (kept in agreement by ``tests/test_cohort_config.py``; what it
cannot express, the loader checks: unique names, that a sync's target exists, field
combinations that depend on the delivery mode or the source, the download budget).

Two forms (several named API-key targets, as Amplitude's Braze cohort destination lets a user
choose "the account you want to sync to", docs/api-facts.md, A5):

* ``targets:`` a list of named targets; each cohort sync names one with ``target``.
* Backward compatibility: no ``targets`` list, the target's keys (``endpoint``, ``api_key``,
  ...) at the top of the document. That single target is read as the target ``"Default"``, and
  syncs may leave ``target`` out (or say ``Default``).

A target: ``endpoint``, ``api_key`` (a reference), ``delivery`` and ``user_mapping``.

* ``delivery: partner`` (the default): Braze's partner cohort-import endpoints
  (docs/api-facts.md, B15). ``api_key`` is the customer's *Data Import Key* (sent as
  ``client_secret``), ``partner_api_key`` (required) the key Braze issued to the partner, and
  ``partner`` the path segment of ``/partners/<partner>/cohorts`` (default ``amplitude``; the
  reference marks Amplitude's exact path **unconfirmed**, so it is a setting).
* ``delivery: attribute``: membership as an array custom attribute through ``/users/track``
  (for teams without a partner key). ``api_key`` is a REST API key with ``users.track``;
  ``attribute`` names the array (default ``amplitude_cohorts``); ``attribute_value`` says what
  goes in it: ``label`` (default) is ``"[Amplitude] <cohort name>: <cohort id>"``, the form in
  which Braze shows Amplitude cohorts (docs/api-facts.md, A5), ``cohort_id`` the bare id.
  ``/users/track`` cannot address a user by device id, so ``device_id`` mapping needs
  ``partner`` delivery.

``verify_users`` (default true): look users up through ``/users/export/ids`` before sending
and report those Braze does not know as skipped, ``unknown_to_braze`` (``transforms.cohorts.lookup``).
It needs a REST API key with ``users.export.ids``, ``lookup_api_key`` (a reference); attribute
delivery falls back to ``api_key``. A partner target must give ``lookup_api_key`` or say
``verify_users: false``.

``user_mapping.type``: ``user_id`` (→ external_id), ``device_id`` (→ device id) or
``user_alias`` (``alias_label`` required; ``alias_source`` is the Amplitude field giving the
alias name, default ``user_id``).

A cohort sync: ``name``, ``cohort_id``, ``cohort_name``, ``target``, ``cadence`` and ``source``,
where its membership comes from (docs/api-facts.md, A6 and A7):

* ``feed``: Amplitude's "Google Pub/Sub (Cohort Sync)" destination; the streaming mode of the job
  reads its subscription. ``cadence`` is what was chosen in Amplitude (``real_time``, ``hourly``
  or ``daily``). The feed carries ``user_id`` only, so a ``device_id`` target needs ``download``.
  ``reconcile: daily|weekly`` schedules a download run of the same sync (default ``none``).
* ``download``: the Behavioral Cohorts download API, run by Cloud Scheduler at ``cadence``
  (``hourly``, ``daily``) or by hand (``one_time``). Needs the ``amplitude`` section.
* ``snapshot``: a file given with ``--snapshot`` (exported by someone else).

The default is ``feed`` for ``cadence: real_time`` and ``snapshot`` otherwise (the file's
meaning before sources existed). ``max_removed_share`` (default 0.5): a run that would remove
more than this share of the members is refused unless it is started with
``--allow_mass_removal``; an empty membership is refused unless ``--allow_empty``.

``amplitude``: the project's ``api_key`` and ``secret_key`` (references; HTTP Basic auth),
``region`` (``us`` or ``eu``), ``monthly_download_budget`` (default 500, Growth/Enterprise),
``budget_reserve`` (downloads kept back for bootstraps and hand runs, default 50),
``max_cohort_size`` (default 2,000,000) and, for local testing only, ``endpoint``. Scheduled
downloads must fit: hourly = 744 a month, daily = 31, a weekly reconcile = 5, summed over the
syncs, at most budget − reserve (``monthly_downloads``).

Two syncs may not send the same cohort to the same target (they would share one "last
successful membership").

``notifications.email``: ``smtp_host``, ``smtp_port`` (default 25), ``sender``,
``recipients``, ``starttls`` (default false) or ``ssl`` (SMTPS, default false), ``username`` and
``password`` (a reference; refused without ``starttls`` or ``ssl``: credentials never travel
in clear), ``timeout_seconds`` (default 10).
"""
from __future__ import annotations

from typing import Optional

from pipeline.cohort_config_rules import CohortValidator
from pipeline.config_documents import decode_document, format_for_name, read_bytes
from pipeline.config_validation import ConfigError
# The model is a leaf module beside the cohort transforms (they read it and never import
# pipeline/); every name stays importable from here.
from transforms.cohorts.model import (  # noqa: F401
    ATTRIBUTE_VALUES, CADENCES, DEFAULT_ATTRIBUTE, DEFAULT_MAX_REMOVED_SHARE, DEFAULT_PARTNER, DEFAULT_TARGET,
    DELIVERY_MODES, MAPPING_TYPES, RECONCILE, REGIONS, RUNS_PER_MONTH, SOURCES, AmplitudeSettings, CohortConfig,
    CohortSync, EmailSettings, Target, UserMapping, monthly_downloads, scheduled_downloads,
)

__all__ = [
    "CADENCES", "DEFAULT_TARGET", "DELIVERY_MODES", "MAPPING_TYPES", "SOURCES", "AmplitudeSettings",
    "CohortConfig", "CohortSync", "ConfigError", "EmailSettings", "Target", "UserMapping", "load_cohorts",
    "loads_cohorts", "monthly_downloads", "parse_cohorts", "scheduled_downloads",
]

# --------------------------------------------------------------------------------------------
# Loading


def load_cohorts(path_or_uri: str, *, allow_insecure_endpoints: bool = False) -> CohortConfig:
    """Read and validate a cohorts file: a local path or ``gs://`` URI, YAML or JSON."""
    source = str(path_or_uri)
    data = read_bytes(source)
    return loads_cohorts(data, source=source, format=format_for_name(source),
                         allow_insecure_endpoints=allow_insecure_endpoints)


def loads_cohorts(text, *, source: str = "<cohorts>", format: Optional[str] = None,
                  allow_insecure_endpoints: bool = False) -> CohortConfig:
    document, duplicates = decode_document(text, source, format, "a mapping with 'cohort_syncs'")
    return _parse(document, source, allow_insecure_endpoints, duplicates)


def parse_cohorts(document, *, source: str = "<cohorts>", allow_insecure_endpoints: bool = False) -> CohortConfig:
    """Validate an already-parsed cohorts document; ``ConfigError`` lists every problem."""
    return _parse(document, source, allow_insecure_endpoints, [])


def _parse(document, source, allow_insecure, problems) -> CohortConfig:
    v = CohortValidator(list(problems), allow_insecure)
    return v.checked(source, v.document(document))
