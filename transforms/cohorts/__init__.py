"""The cohort-sync job's transforms (DESIGN.md, "Cohort-sync job"), one module per concept.

* ``records``: the small records that flow between the steps (Change, Result).
* ``members``: membership input: snapshot rows (CSV / JSONL, local or gs://) → Braze ids,
  with users whose mapped property is empty skipped as ``unresolved_mapping``.
* ``state``: the last successful membership per (cohort, target), written only after a run
  succeeded, and the registry of saved target names.
* ``diff``: new membership against the last successful one → who entered, who left.
* ``lookup``: the check that users exist in Braze (``/users/export/ids``) before delivery;
  unknown users are skipped as ``unknown_to_braze``.
* ``delivery``: the two delivery modes (partner cohort import, array custom attribute), the
  retry policy of the streaming sink, and the Beam transform that sends the changes.
* ``realtime``: Pub/Sub enter/leave messages, flushed at least every minute.
* ``report``: the run report, JSON and CSV.
* ``notify``: the email on success and on failure.
"""
