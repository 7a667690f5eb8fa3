"""The cohort job's state objects: compare-and-swap writes (locally and on GCS), the membership
pointer's atomic switch, the lease; and what reports may contain (no formulas, no keys)."""
import csv
import io
import threading

import pytest

from pipeline.cohort_config import CohortSync, Target
from transforms.cohorts.lease import LeaseHeld, acquire_lease, release_lease, reserve_download, BudgetExhausted
from transforms.cohorts.objects import ABSENT, GcsObjects, LocalObjects
from transforms.cohorts.records import ADD, DONE, SKIPPED, Result
from transforms.cohorts.report import build_report, csv_cell, write_report
from transforms.cohorts.state import StateError, StateStore
from transforms.scrub import remember_secret


def test_local_writes_are_compare_and_swap(tmp_path):
    store, path = LocalObjects(), str(tmp_path / "a" / "pointer.json")
    assert store.read(path) == (None, ABSENT)
    assert store.write(path, b"one", ABSENT)
    data, version = store.read(path)
    assert data == b"one"
    assert not store.write(path, b"two", ABSENT)  # it exists now
    assert store.write(path, b"two", version)
    assert not store.write(path, b"three", version)  # stale version
    assert store.read(path).data == b"two"
    assert not store.delete(path, version) and store.delete(path, store.read(path).version)


def test_only_one_of_many_concurrent_writers_wins(tmp_path):
    store, path = LocalObjects(), str(tmp_path / "p.json")
    version = store.read(path).version
    wins = []
    threads = [threading.Thread(target=lambda i=i: wins.append(store.write(path, str(i).encode(), version)))
               for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wins.count(True) == 1


class _FakeBlob:
    """GCS cannot run here: an in-memory bucket with generation preconditions, as the real
    client raises them (google.api_core.exceptions.PreconditionFailed / NotFound)."""

    def __init__(self, objects, name):
        self.objects, self.name, self.generation = objects, name, None

    def download_as_bytes(self):
        from google.api_core import exceptions
        if self.name not in self.objects:
            raise exceptions.NotFound("no such object")
        data, self.generation = self.objects[self.name]
        return data

    def _check(self, if_generation_match):
        from google.api_core import exceptions
        current = self.objects.get(self.name, (None, 0))[1]
        if if_generation_match is not None and if_generation_match != current:
            raise exceptions.PreconditionFailed("generation mismatch")

    def upload_from_string(self, data, content_type=None, if_generation_match=None):
        self._check(if_generation_match)
        self.objects[self.name] = (data, self.objects.get(self.name, (None, 0))[1] + 1)

    def delete(self, if_generation_match=None):
        from google.api_core import exceptions
        if self.name not in self.objects:
            raise exceptions.NotFound("no such object")
        self._check(if_generation_match)
        del self.objects[self.name]


class _FakeClient:
    def __init__(self):
        self.objects = {}

    def bucket(self, name):
        client = self

        class _Bucket:
            def blob(self, blob_name):
                return _FakeBlob(client.objects, f"{name}/{blob_name}")
        return _Bucket()


def test_gcs_writes_use_generation_preconditions():
    store, path = GcsObjects(_FakeClient()), "gs://bucket/state/pointer.json"
    assert store.read(path) == (None, ABSENT)
    assert store.write(path, b"one", ABSENT) and not store.write(path, b"again", ABSENT)
    data, version = store.read(path)
    assert (data, version) == (b"one", "1")
    assert store.write(path, b"two", version) and not store.write(path, b"three", version)
    assert not store.delete(path, version) and store.delete(path, "2") and store.read(path).data is None


def test_the_membership_pointer_switches_atomically_and_refuses_a_stale_commit(tmp_path):
    store = StateStore(str(tmp_path))
    first = store.run_membership_path("c1", "US", "run-1")
    (tmp_path / "membership" / "c1" / "US").mkdir(parents=True)
    open(first, "w").write('{"_meta": {"run_id": "run-1"}}\n{"key": "u1", "amplitude_ids": ["1"]}\n')
    pointer, version = store.read_pointer("c1", "US")
    assert pointer is None
    store.commit_membership("c1", "US", first, {"run_id": "run-1"}, version)
    assert store.read_membership("c1", "US") == {"u1": ["1"]}
    # Two runs read the same pointer; the first to commit wins, the second is refused.
    _, seen = store.read_pointer("c1", "US")
    second, third = (store.run_membership_path("c1", "US", r) for r in ("run-2", "run-3"))
    for path in (second, third):
        open(path, "w").write('{"_meta": {}}\n{"key": "u2", "amplitude_ids": ["2"]}\n')
    store.commit_membership("c1", "US", second, {"run_id": "run-2"}, seen)
    with pytest.raises(StateError, match="another run committed a membership"):
        store.commit_membership("c1", "US", third, {"run_id": "run-3"}, seen)
    assert store.read_meta("c1", "US") == {"run_id": "run-2"}


def test_a_lease_is_exclusive_until_released_or_expired(tmp_path):
    lease = acquire_lease(str(tmp_path), "c1", "US", "run-1", 10, sync="s")
    with pytest.raises(LeaseHeld, match="run 'run-1' of sync 's'"):
        acquire_lease(str(tmp_path), "c1", "US", "run-2", 10)
    assert release_lease(lease)
    acquire_lease(str(tmp_path), "c1", "US", "run-2", -1)  # already expired: the next run may take it
    acquire_lease(str(tmp_path), "c1", "US", "run-3", 10)


def test_the_download_budget_keeps_its_reserve(tmp_path):
    counts = [reserve_download(str(tmp_path), 3, 1, sync="s", run_id=f"r{i}") for i in range(2)]
    assert counts == [1, 2]
    with pytest.raises(BudgetExhausted, match="2 downloads counted, the limit is 2"):
        reserve_download(str(tmp_path), 3, 1, sync="s", run_id="r3")
    assert reserve_download(str(tmp_path), 3, 1, sync="s", run_id="r3", use_reserve=True) == 3


def test_report_cells_cannot_start_a_formula_and_keys_never_appear(tmp_path):
    for value, shown in (("=HYPERLINK(\"x\")", "'=HYPERLINK(\"x\")"), ("+1", "'+1"), ("-2", "'-2"),
                         ("@SUM(A1)", "'@SUM(A1)"), ("\tx", "'\tx"), ("\rx", "'\rx"), ("u1", "u1"), (None, "")):
        assert csv_cell(value) == shown
    key = "braze-key-0123456789abcdef"
    remember_secret(key)
    sync = CohortSync("s", "c1", "C", "US", "daily")
    target = Target("US", "https://rest.iad-01.braze.com", "env:K", partner_api_key="env:P", lookup_api_key="env:L")
    results = [Result(ADD, "=cmd|' /C calc'!A0", ("1",), DONE),
               Result(ADD, "u2", ("2",), SKIPPED, "rejected_by_braze", f"Braze said: bad key {key!r}"),
               Result(ADD, "u3", ("3",), SKIPPED, "rejected_by_braze", "amplitude secret " + "amp-secret-xyz987")]
    report = build_report(run_id="r", sync=sync, target=target, mode="full", started_at="t", finished_at="t",
                          status="success", results=results)
    json_path, csv_path = str(tmp_path / "r.json"), str(tmp_path / "r.csv")
    write_report(report, json_path, csv_path, secrets=("amp-secret-xyz987",))
    text = open(json_path).read() + open(csv_path).read()
    assert key not in text and "amp-secret-xyz987" not in text and "***" in text
    rows = list(csv.DictReader(io.StringIO(open(csv_path).read())))
    assert [r["braze_id"] for r in rows if r["status"] == "sent"] == ["'=cmd|' /C calc'!A0"]
