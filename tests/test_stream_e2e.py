"""The streaming job as a user runs it: `python -m pipeline.stream` on the real Pub/Sub
emulator, sending over real HTTP to the Braze simulator (the demo's path, smaller)."""
import io
import os
import re

import orjson
import pytest

from local.demo import run_demo
from local.stack import JobFailed


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
                      inspect=inspect, progress_seconds=1.0)
    assert totals["pending"] == 0, out.getvalue()
    assert totals["published"] == totals["delivered"] + totals["skipped"] + totals["dead_lettered"]
    assert totals["delivered"] > 0 and totals["dead_lettered"] > 0  # the sample has malformed messages

    # What Braze holds is what the job says it delivered: one event per delivered track outcome.
    assert sum(len(u["events"]) for u in seen["users"]) == seen["delivered_track"]
    # The dead letters carry the failed bytes as data, and a stage, a reason and a detail.
    for attributes, data in seen["dead_letters"]:
        assert attributes["stage"] and attributes["reason"] and attributes["detail"] and data is not None
    assert seen["keys_in_dead_letters"] == []  # run_demo itself checks the job's log
    lines = out.getvalue().rstrip().splitlines()
    assert lines[-1].startswith(f"demo: published={totals['published']} ")
    # It talked while it waited, and a run that ended well leaves no log behind.
    progress = [int(m.group(1)) for m in (re.match(r"demo: +\d+ s  accounted for (\d+)/400 .*, pending \d+; ", line)
                                          for line in lines) if m]
    assert len(progress) >= 2 and progress[-1] > 0, lines
    log_path = re.search(r"job log: (\S+)", out.getvalue()).group(1)
    assert not os.path.exists(log_path)
    assert "log is kept" not in out.getvalue()


@pytest.mark.integration
def test_when_the_job_fails_the_demo_keeps_its_log_and_says_where(pubsub_emulator):
    out = io.StringIO()
    with pytest.raises(JobFailed):  # the job refuses the misspelt option and exits 2
        run_demo(events=20, users=5, seed=3, deadline_seconds=120, out=out, emulator=pubsub_emulator,
                 job_args=["--braze_max_attemps=3"])
    kept = re.search(r"demo: the job's log is kept at (\S+)", out.getvalue())
    assert kept, out.getvalue()
    with open(kept.group(1)) as f:
        assert "unknown option --braze_max_attemps (did you mean --braze_max_attempts?)" in f.read()
    os.remove(kept.group(1))
    os.rmdir(os.path.dirname(kept.group(1)))
