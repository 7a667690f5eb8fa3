"""A running job can be updated in place only if its stateful steps keep their names and coders.

The streaming job's graph is built through the real DataflowRunner, offline, and its stateful
steps (full unique names, key coder, state coders, timers) are compared with the pins in
templates/stateful_steps.json. A rename or a coder change fails here with what to do.
"""
import json

import pytest

from templates import stateful_steps
from templates.job_request import StatefulStep

pytestmark = pytest.mark.timeout(180)

WHAT_TO_DO = """\
A Dataflow --update hands each stateful step's state (dedup, identify, batching, and their
timers) to the step with the same full name in the new job, decoded with the same coders.
If this change is meant:
  - a renamed step: update running jobs with a mapping from the old name (or a prefix of it)
    to the new one: make launch ENV=<env> UPDATE=1 MAPPINGS="<old>=<new>"
    (gcloud dataflow flex-template run ... --update --transform-name-mappings=<old>=<new>);
    without it the renamed step starts with empty state;
  - a changed key or state coder: an update cannot read the old state; drain the running job
    and launch the new one (README, "Updating a running job");
  - then re-pin in the same change: python -m templates.stateful_steps --write"""


def test_stateful_steps_match_the_pins():
    pinned = stateful_steps.load_pins()
    for job in stateful_steps.JOBS:
        differences = stateful_steps.differences(pinned.get(job, {}), stateful_steps.current_steps(job))
        assert not differences, (
            f"The stateful steps of the {job!r} job differ from templates/stateful_steps.json:\n  "
            + "\n  ".join(differences) + "\n" + WHAT_TO_DO)


def _step(name, key="beam:coder:string_utf8:v1", state=(("seen", "beam:coder:bytes:v1"),), timers=("ts-expiry",)):
    return StatefulStep(name=name, key_coder=key, key_coder_deterministic=True, state=state, timers=timers)


def test_differences_name_a_rename_and_a_coder_change():
    pinned = {"Job/Dedup/ParDo(D)": _step("Job/Dedup/ParDo(D)").pin(),
              "Job/Identify/ParDo(I)": _step("Job/Identify/ParDo(I)").pin()}
    current = {"Job/DropRepeats/ParDo(D)": _step("Job/DropRepeats/ParDo(D)"),
               "Job/Identify/ParDo(I)": _step("Job/Identify/ParDo(I)", key="beam:coder:row:v1{user:STRING}")}
    assert stateful_steps.differences(pinned, current) == [
        "gone or renamed: Job/Dedup/ParDo(D)",
        "new: Job/DropRepeats/ParDo(D)",
        "key_coder changed: Job/Identify/ParDo(I): beam:coder:string_utf8:v1 -> beam:coder:row:v1{user:STRING}",
    ]
    assert stateful_steps.differences(pinned, {n: _step(n) for n in pinned}) == []


def test_the_pin_command_reports_stale_pins_and_rewrites_them(tmp_path, monkeypatch, capsys):
    pins = tmp_path / "stateful_steps.json"
    document = json.loads(stateful_steps.render_pins({"stream": stateful_steps.current_steps("stream")}))
    (renamed, pin), = [(n, p) for n, p in document["jobs"]["stream"].items() if "Identify" in n]
    document["jobs"]["stream"]["Old/" + renamed] = document["jobs"]["stream"].pop(renamed)
    pins.write_text(json.dumps(document))
    monkeypatch.setattr(stateful_steps, "PINS_PATH", str(pins))

    assert stateful_steps.main([]) == 1
    out = capsys.readouterr().out
    assert f"differs from the pins: gone or renamed: Old/{renamed}" in out
    assert f"differs from the pins: new: {renamed}" in out
    assert "--write to re-pin" in out

    assert stateful_steps.main(["--write"]) == 0
    assert stateful_steps.main([]) == 0
    assert renamed in json.loads(pins.read_text())["jobs"]["stream"]
