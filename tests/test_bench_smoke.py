"""Each benchmark part's code path runs on a tiny corpus. No timing is asserted: `make bench`
measures, `make test` only checks that the measuring still works as the job changes, and that
what the parts count (objects delivered, state metered, requests drained) adds up."""
import json
import os

import orjson
import pytest

from bench import PARTS
from bench.__main__ import goals, merge, parse_args, table
from bench.common import Corpus, CorpusSpec, bench_syncs
from transforms.identifiers import IdentifierMapper

STATEFUL_STAGES = {"dedup", "identify", "pack", "sink"}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return Corpus(CorpusSpec(events=400, users=40, seed=5, malformed_share=0.02), str(tmp_path_factory.mktemp("c")))


def floor_objects_expected(corpus) -> int:
    """One object per distinct event (repeats share an insert id) and sync with an identifier."""
    mappers = [(s.name, IdentifierMapper(s.identifier, s.users.update_existing_only)) for s in bench_syncs()]
    expected = set()
    for m, data in enumerate(corpus.messages):
        try:
            decoded = orjson.loads(data)
        except orjson.JSONDecodeError:
            continue
        for i, raw in enumerate(decoded if isinstance(decoded, list) else [decoded]):
            if isinstance(raw, dict):
                insert_id = raw.get("insert_id") or raw.get("$insert_id") or raw.get("uuid")
                identity = f"{insert_id}|{raw.get('device_id') or raw.get('user_id') or ''}" if insert_id else (m, i)
                expected |= {(identity, name) for name, mapper in mappers if mapper.user_key(raw) is not None}
    return len(expected)


def test_core(corpus):
    from bench import core

    result = core.run(corpus, repeats=1, do_profile=True, log=lambda *a: None)
    assert result["events"] == corpus.events and result["objects"] > 0 and result["requests"] > 0
    assert result["us_per_event"] > 0 and set(result["us_per_event_by_stage"]) == set(core.STAGES)
    assert result["profile"]["top_self_time"] and result["profile"]["by_file_pct"]


@pytest.mark.integration
def test_beam_batch_floor_state_and_data_points(corpus, tmp_path):
    from bench import beam_batch, data_points

    shared = {}
    result = beam_batch.run(corpus, str(tmp_path), shared=shared, log=lambda *a: None)
    assert result["simulator_requests"] > 0 and result["ratio_to_same_shape_floor"] > 0
    # The floor delivered every object it stands for, and all of them were accepted.
    assert result["floor_simulator"]["objects"] == floor_objects_expected(corpus)
    assert result["floor_simulator"]["objects_rejected"] == 0
    points = data_points.run(corpus, str(tmp_path), ours=shared["data_points"], log=lambda *a: None)
    assert 0 < points["ours"] <= points["naive"] and points["ours_redundant_writes"] == 0


@pytest.mark.integration
def test_scale_curve(corpus, tmp_path):
    from bench import scale

    result = scale.run(corpus.spec, str(tmp_path), sizes=(200, 400), log=lambda *a: None)
    assert [c["events"] for c in result["curve"]] == [200, 400]
    assert [c["users"] for c in result["curve"]] == [10, 20]  # one user per 20 events
    # At these sizes the cost may not stand out of the fixed cost's noise: then no figure.
    costs = [c["us_per_event_cpu"] for c in result["curve"]]
    assert all(c is None or c > 0 for c in costs)
    ratio = result["cost_ratio_largest_to_smallest"]
    assert (ratio is None) == (None in costs) and (ratio is None or ratio > 0)
    assert result["state_bytes_per_event"] == max(c["state_bytes_per_event"] for c in result["curve"]) > 0
    # State was metered in every keyed stage, on the state channel and per operation.
    state = result["state_detail_largest"]
    # Every keyed stage is metered under its name. The anonymous merges' stage holds no device
    # here (no bench sync has identifier.anonymous) but now and then shows a state call.
    metered = set(state["stages"])
    assert metered == set(state["per_operation"]["stages"]) and STATEFUL_STAGES <= metered <= STATEFUL_STAGES | {"merge"}
    assert state["per_operation"]["stages"]["pack"]["keys"] == 8  # 2 syncs x 4 shards
    assert state["per_operation"]["stages"]["identify"]["bytes_written_per_event"] > 0
    # Every operation is counted, and what reaches the channel is no more than that.
    assert 0 < result["state_channel_bytes_per_event"] <= result["state_bytes_per_event"]


@pytest.mark.integration
def test_sink_drain_and_naive_forwarder(corpus, tmp_path):
    from bench import naive_forwarder, sink, sink_drain

    result = sink.run(corpus, str(tmp_path), batches=2, latency_ms=10, drain_requests=3, in_flight_limits=(1, 2),
                      log=lambda *a: None)
    assert result["requests"] >= 2 and result["max_in_flight"] >= 1
    one_key = result["one_key"]
    held = sum(len(r.items) for r in sink_drain.key_requests(corpus, bench_syncs(), 3))
    for limit in ("1", "2"):  # every held object reached Braze once the outage ended
        assert one_key["drain_corpus_users"][limit]["objects"] == held
        assert one_key["drain_own_users"][limit]["objects"] == held
    assert one_key["steady"]["objects"] == held
    naive = naive_forwarder.run(corpus, str(tmp_path), events=100, log=lambda *a: None)
    assert naive["requests"] > 0


@pytest.mark.integration
def test_streaming_against_its_floor(corpus, tmp_path, pubsub_emulator):
    from bench import streaming

    result = streaming.run(corpus, str(tmp_path), rate=40, duration=3, tail=2, drain_seconds=30,
                           plot_path=str(tmp_path / "latency.png"), emulator=pubsub_emulator, log=lambda *a: None)
    assert result["requests"] > 0 and result["window_event_objects_matched"] > 0
    assert result["floor"]["window_objects_matched"] > 0 and result["floor"]["all_expected_arrived"]
    assert result["p95_ratio_to_same_shape_floor"] > 0
    assert os.path.exists(tmp_path / "latency.png")


def test_results_file_goals_and_table(tmp_path):
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"core": {"us_per_event": 55.0, "ratio_to_floor": 0.1}}))
    merged = merge(str(path), {"beam_batch": {"ratio_to_same_shape_floor": 0.6, "objects_per_request": 74.9},
                               "scale": {"cost_ratio_largest_to_smallest": 1.3, "state_bytes_per_event": 900},
                               "streaming": {"latency_p95_s": 90.0, "fill_ratio": 0.3}, "machine": {"cores": 2}})
    assert merged["core"]["us_per_event"] == 55.0  # kept from the earlier run
    met = {g["figure"]: g["met"] for g in goals(merged)}
    assert met["core.us_per_event"] is False and met["beam_batch.ratio_to_same_shape_floor"] is True
    assert met["scale.cost_ratio_largest_to_smallest"] is False and met["scale.state_bytes_per_event"] is True
    assert met["streaming.ratio_to_same_shape_floor"] is None  # not measured in this run
    assert "streaming.latency_p95_s" not in met  # retired: reported, not judged
    text = table(merged)
    assert "NOT MET" in text and "retired goal" in text
    with_large = dict(merged, scale_large={"cost_ratio_largest_to_smallest": 1.1})
    assert {g["figure"]: g["met"] for g in goals(with_large)}["scale.cost_ratio_largest_to_smallest"] is True
    assert parse_args(["core", "sink"]).parts == ["core", "sink"] and "scale" in PARTS
    assert parse_args(["--scale-sizes", "1000000,10000"]).scale_sizes == (10000, 1000000)
