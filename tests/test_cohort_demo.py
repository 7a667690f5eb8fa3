"""`make cohort-demo` end to end: the streaming mode as a process reading the real Pub/Sub emulator,
and download-based runs from the Amplitude stand-in, every figure checked against the Braze
simulator (about 45 s)."""
import io

import pytest

from local.cohort_demo import run_demo


@pytest.mark.integration
def test_the_cohort_demo_adds_up(tmp_path):
    out = io.StringIO()
    assert run_demo(str(tmp_path), out=out) == 0, out.getvalue()
    text = out.getvalue()
    # u3's exit and its late, older entry: u3 ends removed (its first entry may have gone out in an earlier flush)
    assert "c_power: added ['u1', 'u2'" in text and "removed ['u3']" in text and "Braze holds ['u1', 'u2']" in text
    assert "c_churn: added ['u4', 'u5'], removed -, skipped ['ghost']" in text
    assert "dead letter: unknown_cohort" in text
    assert "run 1 (full): success; added 3, removed 0, skipped 1, unchanged 0" in text
    assert "run 2 (incremental): success; added 1, removed 1, skipped 0, unchanged 2" in text
    assert "every figure adds up against the Braze simulator" in text
