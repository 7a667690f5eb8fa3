"""Shadow mode: a sync's requests built as the sink would send them, handed over instead of sent.

The sink runs on the FnApiRunner against the real Braze simulator over HTTP, beside a live sync:
what reached Braze is read from the simulator. Identify's state is carried from a shadow run of
``IdentifyDoFn`` to a live one through the same state cell, as ``--update`` hands it over.
"""
import threading
from typing import Tuple

import apache_beam as beam
import orjson
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.utils.timestamp import Timestamp

from local.braze_sim import SimClient
from pipeline import stream
from pipeline.config import Sync
from transforms.braze_client import build_track_body
from transforms.identify import SHADOW_MARK, IdentifyDoFn, in_mode
from transforms.records import ATTRIBUTES, DELIVERED, EVENTS, IDENTIFY, SKIPPED, TRACK, BrazeItem, IdentifyWork, \
    Outcome, Request, ShadowRequest
from transforms.shadow import SHADOW, shadow_message, shadow_request
from transforms.sink import DEAD_LETTER_TAG, OUTCOMES_TAG, SHADOW_TAG, WriteToBraze
from tests.conftest import run_and_collect

KEY_ENV = "AMPLITUDE_BRAZE_TEST_SHADOW_KEY"
UNSET_ENV = "AMPLITUDE_BRAZE_TEST_SHADOW_NO_SUCH_KEY"  # never set: reading it would dead-letter
TIME = "2026-01-15T10:00:00.000Z"

_LOCK = threading.Lock()
_RESOLVED = []


def _recording_resolver(reference):
    # Module-level, so the pickled sink calls this very function in this process.
    from transforms.secrets import resolve_api_key

    with _LOCK:
        _RESOLVED.append(reference)
    return resolve_api_key(reference)


def _items(sync, users=("u1", "u2")):
    items = []
    for n, user in enumerate(users):
        items.append(BrazeItem(sync, user, ATTRIBUTES, {"external_id": user, "plan": "pro"}, (f"a{n}/0",), IDENTIFY,
                               None, 1, {}))
        items.append(BrazeItem(sync, user, EVENTS, {"external_id": user, "name": "played", "time": TIME},
                               (f"e{n}/0",), TRACK, None))
    return tuple(items)


def _run_sink(requests, syncs):
    def build(p):
        results = (p | beam.Create(requests, reshuffle=False).with_output_types(Tuple[str, Request])
                   | WriteToBraze(syncs, resolve_key=_recording_resolver, sleep=lambda s: None))
        return {tag: results[tag] for tag in (OUTCOMES_TAG, DEAD_LETTER_TAG, SHADOW_TAG)}

    collected = run_and_collect(build, runner="FnApiRunner")
    counters = {c.key.metric.name: c.committed
                for c in collected.result.metrics().query(MetricsFilter())["counters"]}
    return {tag: collected[tag] for tag in (OUTCOMES_TAG, DEAD_LETTER_TAG, SHADOW_TAG)}, counters


# --- The records (pure)


def test_a_shadow_request_is_the_body_the_sender_would_post():
    request = Request("dry#2", 7, _items("dry"))
    shadow = shadow_request(request)
    assert shadow == ShadowRequest("dry", "dry#2", 7, build_track_body(request.items)[0].decode(), 4)
    assert orjson.loads(shadow.body) == {
        "attributes": [{"external_id": "u1", "plan": "pro"}, {"external_id": "u2", "plan": "pro"}],
        "events": [{"external_id": u, "name": "played", "time": TIME} for u in ("u1", "u2")],
    }


def test_a_shadow_message_carries_the_body_and_says_where_it_belongs():
    shadow = shadow_request(Request("dry#2", 7, _items("dry")))
    message = shadow_message(shadow)
    assert message.data == shadow.body.encode()
    assert message.attributes == {"format": "1", "sync": "dry", "batch_key": "dry#2", "seq": "7", "objects": "4"}


# --- The sink


def test_a_shadow_sync_builds_its_requests_and_sends_none_beside_a_live_one(braze_sim, monkeypatch):
    monkeypatch.setenv(KEY_ENV, braze_sim.api_key)
    monkeypatch.delenv(UNSET_ENV, raising=False)
    with _LOCK:
        _RESOLVED.clear()
    live = Sync(name="live", endpoint=braze_sim.url, api_key=f"env:{KEY_ENV}")
    dry = Sync(name="dry", endpoint=braze_sim.url, api_key=f"env:{UNSET_ENV}", mode="shadow")
    # The shadow key's requests arrive out of order: the sink's ordering still applies to them.
    requests = [("live#0", Request("live#0", 0, _items("live"))),
                ("dry#0", Request("dry#0", 1, _items("dry", ("u3",)))),
                ("dry#0", Request("dry#0", 0, _items("dry")))]
    out, counters = _run_sink(requests, [live, dry])

    sent = [r["body"] for r in SimClient(braze_sim.url).requests() if r["path"] == "/users/track"]
    assert sent == [orjson.loads(build_track_body(_items("live"))[0])]  # only the live sync reached Braze
    shadows = sorted(out[SHADOW_TAG], key=lambda s: s.seq)
    assert [(s.sync, s.key, s.seq, s.objects) for s in shadows] == [("dry", "dry#0", 0, 4), ("dry", "dry#0", 1, 2)]
    # The same objects make the same body, whichever sync they belong to.
    assert orjson.loads(shadows[0].body) == sent[0]
    assert out[DEAD_LETTER_TAG] == []
    assert sorted(o for o in out[OUTCOMES_TAG] if o.sync == "dry") == sorted(
        [Outcome(f"{p}{n}/0", "dry", b, SKIPPED, SHADOW) for n in (0, 1) for p, b in (("a", IDENTIFY), ("e", TRACK))]
        + [Outcome("a0/0", "dry", IDENTIFY, SKIPPED, SHADOW), Outcome("e0/0", "dry", TRACK, SKIPPED, SHADOW)])
    assert {o.status for o in out[OUTCOMES_TAG] if o.sync == "live"} == {DELIVERED}
    assert (counters["dry.shadow_requests"], counters["dry.shadow_objects"]) == (2, 6)
    assert "dry.requests" not in counters or counters["dry.requests"] == 0
    assert _RESOLVED == [f"env:{KEY_ENV}"]  # the shadow sync's key was never read


# --- Identify's state across a change of mode


class _Cell:
    """A state cell as Beam hands it to the DoFn; one value kept across DoFn instances, as an
    ``--update`` hands a step's state to the new job."""

    def __init__(self):
        self.value = None

    def read(self):
        return self.value

    def write(self, value):
        self.value = value

    def clear(self):
        self.value = None


class _Timer:
    def set(self, timestamp):
        pass


def _identify(dofn, cell, n, plan="pro"):
    """One update of user u in sync s through the DoFn: (attributes sent, skip reasons, batch)."""
    from transforms.coders import JsonValue

    work = IdentifyWork(f"m{n}/0", None, 1_700_000_000_000 + n, {"external_id": "u"}, (("$set", "plan", plan),), ())
    out = list(dofn._apply("s|u", [work], Timestamp(micros=1_700_000_000_000_000 + n * 1000), JsonValue(cell),
                           _Timer()))
    batches = [o.value for o in out if hasattr(o, "value") and hasattr(o.value, "items")]
    skips = [o.value.reason for o in out if hasattr(o, "tag")]
    sent = [dict(i.obj) for b in batches for i in b.items]
    return sent, skips, batches


def test_values_a_shadow_sync_showed_are_sent_once_it_is_live():
    cell = _Cell()
    shadow = IdentifyDoFn({"s": ("plan",)}, shadow_syncs=("s",))
    assert _identify(shadow, cell, 1)[0] == [{"external_id": "u", "plan": "pro"}]
    assert _identify(shadow, cell, 2)[1] == ["unchanged"]  # in shadow, as live: only what changes
    first_tau = orjson.loads(cell.value)["t"]

    live = IdentifyDoFn({"s": ("plan",)})  # the same step after an --update that turned the sync live
    sent, skips, [batch] = _identify(live, cell, 3)
    assert (sent, skips) == ([{"external_id": "u", "plan": "pro"}], [])  # Braze never got it: sent
    assert batch.after == first_tau  # the user's order is kept across the change
    assert _identify(live, cell, 4)[1] == ["unchanged"]  # from now on Braze has it
    assert SHADOW_MARK not in orjson.loads(cell.value)


def test_a_live_syncs_values_say_nothing_about_what_its_shadow_shows():
    cell = _Cell()
    live = IdentifyDoFn({"s": ("plan",)})
    _identify(live, cell, 1)
    shadow = IdentifyDoFn({"s": ("plan",)}, shadow_syncs=("s",))
    assert _identify(shadow, cell, 2)[0] == [{"external_id": "u", "plan": "pro"}]
    assert orjson.loads(cell.value)[SHADOW_MARK] == 1


def test_in_mode_keeps_order_and_expiry_and_drops_values_of_the_other_mode():
    state = {"p": {"plan": [1, 1, "pro"]}, "n": 3, "t": 99, "e": 123.0, SHADOW_MARK: 1}
    assert in_mode(state, shadow=True) is state
    assert in_mode(state, shadow=False) == {"n": 3, "t": 99, "e": 123.0}
    live_state = {"p": {"plan": [1, 1, "pro"]}, "n": 3}
    assert in_mode(live_state, shadow=False) is live_state  # a live sync's state is read as it always was
    assert in_mode(live_state, shadow=True) == {"n": 3}
    assert in_mode(None, shadow=True) is None


# --- The job's command line


def _syncs_file(tmp_path, **extra):
    path = tmp_path / "syncs.yaml"
    path.write_text(orjson.dumps({"syncs": [
        {"name": "new", "endpoint": "https://rest.iad-01.braze.com", "api_key": "env:K", "mode": "shadow",
         "events": {"select": [{"event_type": "*"}]}, **extra}]}).decode())
    return str(path)


def test_the_job_needs_a_shadow_topic_when_an_enabled_sync_is_in_shadow(tmp_path, capsys):
    args = ["--input_subscription=projects/p/subscriptions/s", "--dead_letter_topic=projects/p/topics/d",
            f"--sync_config={_syncs_file(tmp_path)}"]
    assert stream.run(args) == 2
    assert ("--shadow_topic is required (projects/P/topics/T): sync 'new' has mode: shadow, and its request bodies "
            "are published there instead of sent to Braze") in capsys.readouterr().err
    assert stream.run(args + ["--shadow_topic=shadow"]) == 2
    assert "--shadow_topic must look like projects/P/topics/T, got 'shadow'" in capsys.readouterr().err


def test_the_shadow_topic_is_wired_when_given_and_only_then(tmp_path):
    from apache_beam.options.pipeline_options import PipelineOptions

    base = ["--input_subscription=projects/my-project/subscriptions/s",
            "--dead_letter_topic=projects/my-project/topics/d"]
    with_shadow = stream.build_pipeline(PipelineOptions(
        base + [f"--sync_config={_syncs_file(tmp_path)}", "--shadow_topic=projects/my-project/topics/shadow"]))
    labels = {t.full_label for t in with_shadow.transforms_stack[0].parts}
    assert {"WriteShadowRequests", "WriteDeadLetters", "EventsToBraze"} <= labels
    # A disabled shadow sync needs no topic; a live job without the option has no such step.
    live = stream.build_pipeline(PipelineOptions(base + [f"--sync_config={_syncs_file(tmp_path, mode='live')}"]))
    assert "WriteShadowRequests" not in {t.full_label for t in live.transforms_stack[0].parts}
