"""The cohort-sync job's transforms (the README's "Cohort sync"), one module per concept.

* ``records``: the small records that flow between the steps (Change, Result).
* ``members``: membership input: snapshot or download rows (CSV / JSONL, local or gs://) → Braze
  ids, with users whose mapped property is empty skipped as ``unresolved_mapping``.
* ``amplitude_api``: fetching a cohort from Amplitude's download API (request, poll, file).
* ``objects``: small state objects written with compare-and-swap (local, GCS).
* ``state``: the last successful membership per (cohort, target) behind an atomic pointer, and
  the registry of saved target names; ``lease``: one run per sync, and the download budget.
* ``diff``: new membership against the last successful one → who entered, who left.
* ``lookup``: the check that users exist in Braze (``/users/export/ids``) before delivery.
* ``transport``: the partner endpoints' client and the retry loop; ``delivery``: the two
  delivery modes and the Beam transform that sends the changes.
* ``feed``, ``feed_state``, ``realtime``, ``feed_reports``: the streaming mode over Amplitude's
  Pub/Sub cohort feed: parsing, repeats and ordering, buffered delivery, hourly/daily reports.
* ``report``: the run report, JSON and CSV; ``notify``: the email on success and on failure.
"""
