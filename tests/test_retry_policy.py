"""The one retry policy every caller uses (transforms/retry_policy.py): when a transient failure
is tried again and after how long; what else to do stays with the caller."""
import pytest

from transforms import braze_client as bc
from transforms.braze_client import Response, TransportError
from transforms.retry_policy import Budget, RetryPolicy


class MaxRng:
    @staticmethod
    def uniform(low, high):
        return high


RETRY = bc.Verdict(bc.RETRY, "http_503", "HTTP 503", 503)
LIMITED = bc.Verdict(bc.RETRY, "rate_limited", "HTTP 429", 429, rate_limited=True)
POLICY = RetryPolicy(max_attempts=3, max_retry_seconds=10.0, backoff_base_seconds=1.0, backoff_cap_seconds=8.0)


def budget(used=0.0, seconds=10.0):
    b = Budget(lambda: 0.0, seconds)
    b.waited = used
    return b


@pytest.mark.parametrize("attempt, answer, verdict, used, expected", [
    (1, Response(503, None, {}, ""), RETRY, 0.0, 1.0),  # backoff: base * 2^0, full jitter (max here)
    (2, Response(503, None, {}, ""), RETRY, 0.0, 2.0),
    (3, Response(503, None, {}, ""), RETRY, 0.0, None),  # max_attempts reached: stop
    (1, TransportError("timeout", "read timeout", True), RETRY, 9.5, None),  # the wait would outlast the budget
    (1, Response(429, None, {"retry-after": "4"}, ""), LIMITED, 0.0, 4.0),  # a 429 waits as its headers ask
    (1, Response(429, None, {"retry-after": "30"}, ""), LIMITED, 0.0, None),  # longer than the budget: stop
])
def test_after_a_transient_failure_wait_or_stop(attempt, answer, verdict, used, expected):
    assert POLICY.after_failure(attempt, answer, verdict, budget(used), 0.0, MaxRng()).wait == expected


def test_the_header_wait_is_reported_when_the_tries_stop_so_a_hold_waits_as_long():
    answer = Response(429, None, {"x-ratelimit-retry-after": "30"}, "")
    following = POLICY.after_failure(1, answer, LIMITED, budget(), 0.0, MaxRng())
    assert following.wait is None and following.header_wait == 30.0


def test_a_caller_may_give_its_own_attempts_and_clip_a_backoff_to_what_is_left():
    assert POLICY.after_failure(1, None, RETRY, budget(), 0.0, MaxRng(), max_attempts=1).wait is None
    assert POLICY.after_failure(2, None, RETRY, budget(used=9.5), 0.0, MaxRng(), clip_to_budget=True).wait == 0.5


def test_a_policy_names_the_setting_to_fix():
    with pytest.raises(ValueError, match="max_attempts"):
        RetryPolicy(max_attempts=0).check()
    with pytest.raises(ValueError, match="timeout_seconds"):
        RetryPolicy(timeout_seconds=0).check()
    assert RetryPolicy().check() == RetryPolicy()
