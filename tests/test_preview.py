"""python -m pipeline.preview: what each sync would send for sample events, and what it would not.

The preview runs the job's graph with every sync in shadow mode. The proof that it is the job's
code path: the same graph, on the same corpus, run with the syncs live (sending for real, over
HTTP to the Braze simulator), sends exactly the bodies the preview printed, and every event ends
the same way in both (delivered there, ``skipped``/``shadow`` here). The command line is run as
a user runs it, as a subprocess, where its output and exit code are the point.
"""
import collections
import os
import subprocess
import sys

import orjson
import pytest
import yaml
from apache_beam.options.pipeline_options import PipelineOptions

from local.braze_sim import SimClient
from local.generate import generate_messages
from pipeline import preview as preview_mod
from pipeline.config import parse_syncs
from pipeline.graph import EventsToBraze
from pipeline.preview_report import json_lines
from transforms.records import DELIVERED, SKIPPED
from transforms.shadow import SHADOW
from tests.conftest import run_and_collect

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEY_ENV = "AMPLITUDE_BRAZE_TEST_PREVIEW_KEY"
PUBLISHED_MS = 1_795_000_000_000  # in the past, as the preview stamps its sample

def _syncs_document(url):
    return {"syncs": [
        {"name": "ext", "endpoint": url, "api_key": f"env:{KEY_ENV}", "app_id": "app-1",
         "users": {"properties": ["plan", "country", "city", "login_count", "favorite_genres"]},
         "events": {"select": [{"event_type": "Order Completed"}, {"event_type": "Song Played"}],
                    "properties": ["total", "sku", "song_id"], "purchases": True}},
        {"name": "alias", "endpoint": url, "api_key": f"env:{KEY_ENV}",
         "identifier": {"type": "user_alias", "source": "device_id", "alias_label": "amp_device"},
         "events": {"select": [{"event_type": "*", "where": [
             {"property": "platform", "op": "is", "value": ["iOS", "Android"]}]}]}},
        {"name": "off", "enabled": False, "endpoint": url, "api_key": f"env:{KEY_ENV}",
         "events": {"select": [{"event_type": "*"}]}},
    ]}


def _corpus(events=300):
    messages = generate_messages(events=events, users=30, seed=11, malformed_share=0.02, duplicate_share=0.03)
    return [(n, data) for n, data in enumerate(messages, 1) if data.strip()]


def _run_job(syncs, lines, key):
    """The job's graph on the sample, every sync live, sending to the simulator; its outcomes."""
    def build(p):
        results = preview_mod.sample_messages(p, lines, PUBLISHED_MS) | EventsToBraze(
            syncs, resolve_key=lambda reference: key, sleep=lambda s: None)
        return {"outcomes": results["outcomes"]}

    return run_and_collect(build, PipelineOptions(flags=[], runner="FnApiRunner"))["outcomes"]


@pytest.mark.integration
def test_the_preview_shows_the_bodies_the_job_sends_and_ends_every_event_as_the_job_does(braze_sim):
    syncs = parse_syncs(_syncs_document(braze_sim.url), allow_insecure_endpoints=True)
    lines = _corpus()

    shown = preview_mod.preview(syncs, lines, publish_time_ms=PUBLISHED_MS)
    job_outcomes = _run_job(tuple(s for s in syncs if s.enabled), lines, braze_sim.api_key)

    received = [r for r in SimClient(braze_sim.url).requests() if r["path"] == "/users/track"]
    assert received and all(r["status"] == 201 for r in received)  # Braze took every request whole

    def canonical(body):
        return orjson.dumps(body, option=orjson.OPT_SORT_KEYS)

    assert collections.Counter(canonical(orjson.loads(r.body)) for r in shown.requests) == \
        collections.Counter(canonical(r["body"]) for r in received)
    assert {r.sync for r in shown.requests} == {"ext", "alias"}  # the disabled sync sends nothing

    # Every event, sync and branch ends the same way; where the job delivered, the preview shadowed.
    def ends(outcomes, sent):
        return sorted((o.source, o.sync, o.branch, ("sent", "") if (o.status, o.reason) == sent
                       else (o.status, o.reason)) for o in outcomes)

    assert ends(shown.outcomes, (SKIPPED, SHADOW)) == ends(job_outcomes, (DELIVERED, ""))
    assert len(shown.outcomes) > 2 * len(lines)  # every event in both branches of both syncs
    assert shown.seconds < 30, "a few hundred events should take seconds"


def _write(tmp_path, lines, syncs):
    sample = tmp_path / "sample.jsonl"
    sample.write_bytes(b"\n".join(lines) + b"\n")
    config = tmp_path / "syncs.yaml"
    config.write_text(yaml.safe_dump(syncs, sort_keys=False))
    return str(config), str(sample)


def _preview(*args, env=None):
    done = subprocess.run([sys.executable, "-m", "pipeline.preview", *args], capture_output=True, text=True,
                          timeout=180, cwd=ROOT, env={**os.environ, **(env or {})})
    return done.returncode, done.stdout, done.stderr


def _event(insert_id, event_type="Order Completed", user="u-1", **extra):
    return orjson.dumps({"event_type": event_type, "user_id": user, "device_id": f"dev-{user}", "insert_id": insert_id,
                         "time": 1_790_000_000_000, "event_properties": {"total": 5, "secret": "x"}, **extra})


SMALL_SYNCS = {"syncs": [
    {"name": "ext", "endpoint": "https://rest.iad-01.braze.com", "api_key": f"env:{KEY_ENV}",
     "users": {"properties": ["plan"]},
     "events": {"select": [{"event_type": "Order Completed"}], "properties": ["total"]}},
    {"name": "off", "enabled": False, "endpoint": "https://rest.iad-01.braze.com", "api_key": "env:OTHER",
     "events": {"select": [{"event_type": "*"}]}},
]}
SMALL_SAMPLE = [
    _event("i-1", user_properties={"plan": "pro"}),  # 1: attributes and an event
    b"{broken",  # 2: not JSON
    _event("i-3", event_type="Page Viewed"),  # 3: not selected, no property
    _event("i-1", user_properties={"plan": "pro"}),  # 4: the same insert id again
    b"   ",  # 5: blank: not a message
    b"[" + _event("i-6", user=None) + b"," + _event("i-7", event_type="Page Viewed", user="u-2",
                                                      user_properties={"plan": "free"}) + b"]",  # 6: two events
]


def test_json_lines_are_exactly_what_issue_16_specifies(tmp_path):
    config, sample = _write(tmp_path, SMALL_SAMPLE, SMALL_SYNCS)
    # One shard, so both users share a request; the job's option works here as it does there.
    code, out, err = _preview(f"--sync_config={config}", f"--events={sample}", "--json", "--batch_shards_per_sync=1",
                              env={KEY_ENV: "k-0123456789abcdef-not-printed"})
    assert code == 0, err
    records = [orjson.loads(line) for line in out.splitlines()]
    requests = [r for r in records if "request" in r]
    assert [set(r) for r in requests] == [{"sync", "request"}]
    assert requests[0] == {"sync": "ext", "request": {
        "attributes": [{"external_id": "u-1", "plan": "pro"}, {"external_id": "u-2", "plan": "free"}],
        "events": [{"external_id": "u-1", "name": "Order Completed", "time": "2026-09-21T14:13:20.000Z",
                    "properties": {"total": 5}}]}}
    assert [r for r in records if "request" not in r] == [
        {"sync": None, "line": 2, "insert_id": None, "outcome": "dead_lettered", "reason": "parse: invalid_json"},
        {"sync": None, "line": 4, "insert_id": "i-1", "outcome": "skipped", "reason": "dedup: duplicate"},
        {"sync": "ext", "line": 3, "insert_id": "i-3", "outcome": "skipped",
         "reason": "track: not_selected; identify: no_selected_property"},
        {"sync": "ext", "line": 6, "insert_id": "i-6", "outcome": "skipped",
         "reason": "track: missing_identifier; identify: no_selected_property"},
    ]  # line 6's second event (i-7) is sent: its attributes are in the request
    assert "k-0123456789abcdef" not in out + err


def test_the_table_shows_each_request_with_the_key_hidden_and_each_event_not_sent(tmp_path):
    config, sample = _write(tmp_path, SMALL_SAMPLE, SMALL_SYNCS)
    code, out, err = _preview(f"--sync_config={config}", f"--events={sample}", "--batch_shards_per_sync=1",
                              env={KEY_ENV: "k-0123456789abcdef-not-printed"})
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("preview: 6 event(s) in 5 line(s), 1 enabled sync(s), 1 request(s) that would be "
                               "sent; nothing was sent, no key was read")
    assert "sync ext (mode: live): 1 request(s), 3 object(s); 2 event(s) not sent" in lines
    assert "  request 1 of 1: POST https://rest.iad-01.braze.com/users/track  Authorization: Bearer ***  " \
           "(batch key ext#0, seq 0; 2 attributes, 1 event)" in lines
    assert '        {"external_id":"u-1","plan":"pro"},' in lines  # the body, one object per line
    assert "sync off: disabled (enabled: false), not previewed" in lines
    before = lines.index("before routing (no sync sees these): 2 event(s)")
    assert lines[before + 1].split() == ["line", "insert_id", "outcome", "reason"]
    assert lines[before + 2].split()[:5] == ["2", "-", "dead_lettered", "parse:", "invalid_json"]
    assert "(the message is not JSON we can read: " in lines[before + 2]  # the dead letter's detail
    assert lines[before + 3].split() == ["4", "i-1", "skipped", "dedup:", "duplicate"]
    assert "  not sent: 1 × track: not_selected; identify: no_selected_property, " \
           "1 × track: missing_identifier; identify: no_selected_property" in lines
    assert "k-0123456789abcdef" not in out + err


def test_a_shadow_sync_in_the_file_is_previewed_the_same_way(tmp_path):
    document = {"syncs": [dict(SMALL_SYNCS["syncs"][0], mode="shadow")]}
    config, sample = _write(tmp_path, SMALL_SAMPLE, document)
    code, out, _ = _preview(f"--sync_config={config}", f"--events={sample}", "--batch_shards_per_sync=1")
    assert code == 0
    assert "sync ext (mode: shadow): 1 request(s), 3 object(s); 2 event(s) not sent" in out.splitlines()


@pytest.mark.parametrize("make_args, message", [
    (lambda c, s: [f"--sync_config={c}", f"--event={s}"], "unknown option --event (did you mean --events?)"),
    (lambda c, s: [f"--events={s}"], "--sync_config is required"),
    (lambda c, s: [f"--sync_config={c}", "--events=/nonexistent/sample.jsonl"],
     "cannot read the sample /nonexistent/sample.jsonl: No such file or directory"),
])
def test_mistakes_exit_2_and_say_what_to_fix(tmp_path, make_args, message):
    config, sample = _write(tmp_path, SMALL_SAMPLE, SMALL_SYNCS)
    code, out, err = _preview(*make_args(config, sample))
    assert code == 2 and out == ""
    assert message in err


def test_a_bad_syncs_file_lists_every_problem_and_an_empty_sample_is_refused(tmp_path):
    document = {"syncs": [dict(SMALL_SYNCS["syncs"][0], mode="shadw", evnts={})]}
    config, sample = _write(tmp_path, SMALL_SAMPLE, document)
    code, _, err = _preview(f"--sync_config={config}", f"--events={sample}")
    assert code == 2
    assert "syncs[0].mode: unknown mode 'shadw' (did you mean 'shadow'?)" in err
    assert "syncs[0].evnts: unknown key (did you mean 'events'?)" in err
    config, sample = _write(tmp_path, [b"", b"  "], SMALL_SYNCS)
    code, _, err = _preview(f"--sync_config={config}", f"--events={sample}")
    assert code == 2 and "holds no events" in err


def test_help_marks_the_required_options_and_shows_the_job_options_that_shape_the_bodies():
    code, out, _ = _preview("--help")
    assert code == 0
    assert out.startswith("usage: python -m pipeline.preview --sync_config=FILE --events=SAMPLE.jsonl [--json]")
    text = " ".join(out.split())
    assert "--events=TEXT [required]" in text and "--sync_config=TEXT [required]" in text
    assert "--json[=true|false] [default: false]" in text
    assert "--batch_shards_per_sync=INT [default: 4]" in text
    assert "--input_subscription" not in text  # the job's Pub/Sub options mean nothing here


def test_json_lines_of_an_empty_run_are_empty():
    empty = preview_mod.Preview((), (), (), (), {}, 0, 0)
    assert json_lines(empty) == []
