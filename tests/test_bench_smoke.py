"""Each benchmark part's code path runs on a tiny corpus. No timing is asserted: `make bench`
measures, `make test` only checks that the measuring still works as the job changes."""
import json
import os

import pytest

from bench import PARTS
from bench.__main__ import goals, merge, parse_args, table
from bench.common import Corpus, CorpusSpec


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return Corpus(CorpusSpec(events=400, users=40, seed=5, malformed_share=0.02), str(tmp_path_factory.mktemp("c")))


def test_core(corpus):
    from bench import core

    result = core.run(corpus, repeats=1, do_profile=True, log=lambda *a: None)
    assert result["events"] == corpus.events and result["objects"] > 0 and result["requests"] > 0
    assert result["ratio_to_floor"] > 0 and result["profile"]["top_self_time"]


@pytest.mark.integration
def test_beam_batch_and_data_points(corpus, tmp_path):
    from bench import beam_batch, data_points

    shared = {}
    result = beam_batch.run(corpus, str(tmp_path), shared=shared, log=lambda *a: None)
    assert result["simulator_requests"] > 0 and result["ratio_to_passthrough"] > 0
    points = data_points.run(corpus, str(tmp_path), ours=shared["data_points"], log=lambda *a: None)
    assert 0 < points["ours"] <= points["naive"]


@pytest.mark.integration
def test_sink_and_naive_forwarder(corpus, tmp_path):
    from bench import naive_forwarder, sink

    result = sink.run(corpus, str(tmp_path), batches=2, latency_ms=10, log=lambda *a: None)
    assert result["requests"] >= 2 and result["max_in_flight"] >= 1
    naive = naive_forwarder.run(corpus, str(tmp_path), events=100, log=lambda *a: None)
    assert naive["requests"] > 0


@pytest.mark.integration
def test_streaming(corpus, tmp_path, pubsub_emulator):
    from bench import streaming

    result = streaming.run(corpus, str(tmp_path), rate=40, duration=3, tail=2, drain_seconds=30,
                           plot_path=str(tmp_path / "latency.png"), emulator=pubsub_emulator, log=lambda *a: None)
    assert result["requests"] > 0 and result["window_event_objects_matched"] > 0
    assert os.path.exists(tmp_path / "latency.png")


def test_results_file_and_table(tmp_path):
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"core": {"ratio_to_floor": 0.1}}))
    merged = merge(str(path), {"streaming": {"latency_p95_s": 1.0, "fill_ratio": 0.5}, "machine": {"cores": 2}})
    assert merged["core"]["ratio_to_floor"] == 0.1  # kept from the earlier run
    met = {g["figure"]: g["met"] for g in goals(merged)}
    assert met["core.ratio_to_floor"] is False and met["streaming.latency_p95_s"] is True
    assert "NOT MET" in table(merged)
    assert parse_args(["core", "sink"]).parts == ["core", "sink"] and len(PARTS) == 6
