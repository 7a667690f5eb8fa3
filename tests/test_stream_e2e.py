"""The streaming job as a user runs it: `python -m pipeline.stream` on the real Pub/Sub
emulator, sending over real HTTP to the Braze simulator (the demo's path, smaller)."""
import io

import orjson
import pytest

from local.demo import run_demo


@pytest.mark.integration
def test_every_published_event_is_accounted_for_and_braze_holds_the_delivered_ones(pubsub_emulator):
    seen = {}

    def inspect(run):
        seen["users"] = run.client.users()
        seen["dead_letters"] = [(m.attributes, m.data) for m in run.dead_letters]
        seen["keys_in_dead_letters"] = run.keys_in(b"".join(m.data for m in run.dead_letters))
        seen["delivered_track"] = sum(
            1 for source in run.reconciler.sources for (sync, branch), (status, _) in run.reconciler.parts(source).items()
            if branch == "track" and status == "delivered"
        )

    out = io.StringIO()
    totals = run_demo(events=400, users=40, seed=3, deadline_seconds=150, out=out, emulator=pubsub_emulator,
                      inspect=inspect)
    assert totals["pending"] == 0, out.getvalue()
    assert totals["published"] == totals["delivered"] + totals["skipped"] + totals["dead_lettered"]
    assert totals["delivered"] > 0 and totals["dead_lettered"] > 0  # the sample has malformed messages

    # What Braze holds is what the job says it delivered: one event per delivered track outcome.
    assert sum(len(u["events"]) for u in seen["users"]) == seen["delivered_track"]
    # The dead letters carry the failed bytes as data, and a stage, a reason and a detail.
    for attributes, data in seen["dead_letters"]:
        assert attributes["stage"] and attributes["reason"] and attributes["detail"] and data is not None
    assert seen["keys_in_dead_letters"] == []  # run_demo itself checks the job's log
    assert out.getvalue().rstrip().splitlines()[-1].startswith(f"demo: published={totals['published']} ")
