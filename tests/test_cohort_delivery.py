"""Pure parts of cohort delivery: request bodies, the partner verdicts, the retry loop, diffing."""
import pytest

from pipeline.cohort_config import CohortSync, Target, UserMapping
from transforms import braze_client as bc
from transforms.braze_client import Response, TransportError
from transforms.cohorts.delivery import (
    RETRIES_EXHAUSTED, RetryPolicy, attribute_objects, attribute_value, classify_partner, cohort_label,
    partner_changes_body, send_with_retries,
)
from transforms.cohorts.diff import diff_one
from transforms.cohorts.records import ADD, REMOVE, Change

SYNC = CohortSync("s", "c1", "Power users", "T", "daily")


def test_partner_bodies_per_mapping():
    assert partner_changes_body("P", "S", "c1", UserMapping("user_id"), ADD, ["u1", "u2"]) == {
        "partner_api_key": "P", "client_secret": "S", "cohort_id": "c1", "cohort_changes": [{"user_ids": ["u1", "u2"]}]}
    body = partner_changes_body("P", "S", "c1", UserMapping("device_id"), REMOVE, ["d1"])
    assert body["cohort_changes"] == [{"device_ids": ["d1"], "should_remove": True}]
    body = partner_changes_body("P", "S", "c1", UserMapping("user_alias", "email"), ADD, ["a@x.io"])
    assert body["cohort_changes"] == [{"aliases": [{"alias_name": "a@x.io", "alias_label": "email"}]}]
    with pytest.raises(ValueError):
        partner_changes_body("P", "S", "c1", UserMapping(), ADD, [str(i) for i in range(1001)])


def test_attribute_objects_never_create_users():
    target = Target("T", "https://rest.iad-01.braze.com", "env:K", delivery="attribute")
    assert cohort_label(SYNC) == attribute_value(target, SYNC) == "[Amplitude] Power users: c1"
    objects = attribute_objects(UserMapping("user_id"), "amplitude_cohorts", "v", REMOVE, ["u1"])
    assert objects == [{"external_id": "u1", "amplitude_cohorts": {"remove": ["v"]}, "_update_existing_only": True}]
    objects = attribute_objects(UserMapping("user_alias", "lbl"), "a", "v", ADD, ["n"])
    assert objects == [{"user_alias": {"alias_name": "n", "alias_label": "lbl"}, "a": {"add": ["v"]},
                        "_update_existing_only": True}]
    with pytest.raises(ValueError, match="device id"):
        attribute_objects(UserMapping("device_id"), "a", "v", ADD, ["d"])


@pytest.mark.parametrize("status, body, action", [
    (201, {}, bc.OK), (200, None, bc.OK), (423, {"message": "Resource locked"}, bc.RETRY),
    (400, {"message": "more than 1000 ids"}, bc.FAIL), (401, {"message": "Invalid partner API key"}, bc.FAIL),
    (429, {}, bc.RETRY), (503, {}, bc.RETRY),
])
def test_partner_verdicts(status, body, action):
    assert classify_partner(Response(status, body, {})).action == action
    assert classify_partner(TransportError("timeout", "x")).action == bc.RETRY


def test_retries_follow_the_sink_policy():
    answers = [Response(503, {}, {}), Response(429, {}, {"retry-after": "2"}), Response(201, {}, {})]
    sleeps = []
    verdict, attempts = send_with_retries(lambda: answers.pop(0), classify_partner, RetryPolicy(), sleeps.append,
                                          lambda: 0.0)
    assert (verdict.action, attempts) == (bc.OK, 3)
    assert sleeps[1] == 2.0  # the 429's header wait
    verdict, attempts = send_with_retries(lambda: Response(500, {}, {}), classify_partner,
                                          RetryPolicy(max_attempts=3), lambda s: None, lambda: 0.0)
    assert (verdict.action, verdict.reason, attempts) == (bc.FAIL, RETRIES_EXHAUSTED, 3)


def test_diff_one():
    assert diff_one("u1", ["1"], []) == (Change(ADD, "u1", ("1",)), None)
    assert diff_one("u1", [], [["1", "2"]]) == (Change(REMOVE, "u1", ("1", "2")), None)
    assert diff_one("u1", ["2", "1"], [["1"]]) == (None, ("u1", ("1", "2")))
