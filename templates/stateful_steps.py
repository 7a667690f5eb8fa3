"""The pinned stateful steps of each job: the names and coders a Dataflow ``--update`` needs.

    python -m templates.stateful_steps            # print the current steps and how they differ from the pins
    python -m templates.stateful_steps --write    # re-pin them (templates/stateful_steps.json)

A streaming update hands each stateful step's state (per key: the dedup, identify and batching
state, and their timers) to the step of the same full name in the new job, decoded with the
same coders. A renamed step starts empty (its old state is dropped) unless the update maps
the old name to the new one; a changed key or state coder cannot read the old state at all.
``tests/test_update_safety.py`` fails when the job's graph no longer matches the pins, and
says what to do. Re-pin in the same change that renames a step or changes a coder, and note
in that change what the next update of a running job needs (a mapping, or drain and relaunch).

Each job is built through the real DataflowRunner, offline (``templates/job_request.py``).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from typing import Callable, Dict, List, Optional, Sequence

from templates.job_request import StatefulStep, offline_job_request, stateful_steps

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PINS_PATH = os.path.join(ROOT, "templates", "stateful_steps.json")
PIN_ENV = "dev"  # the env file whose parameters build the graph that is pinned


def stream_job_argv(env: str = PIN_ENV) -> List[str]:
    """The streaming job's arguments as the flex-template launcher would pass them for ``env``:
    its template parameters (the syncs file read from this repository instead of gs://), the
    worker image, and the job's Dataflow settings."""
    from templates import deploy

    document = deploy.load_env(env)
    g = document["gcloud"]
    parameters = dict(document["parameters"], sync_config=os.path.join(ROOT, document["syncs_file"]))
    return ([f"--{k}={v}" for k, v in parameters.items()]
            + [f"--sdk_container_image={g['image']}", f"--project={g['project']}", f"--region={g['region']}",
               f"--job_name={g['job_name']}"])


def _stream_build(options):
    from pipeline.stream import build_pipeline

    return build_pipeline(options)


# job name → (builder of the graph from options, its arguments)
JOBS: Dict[str, Callable[[], tuple]] = {
    "stream": lambda: (_stream_build, stream_job_argv()),
}


def current_steps(job: str) -> Dict[str, StatefulStep]:
    build, argv = JOBS[job]()
    with tempfile.TemporaryDirectory(prefix="stateful-steps-") as staging:
        return stateful_steps(offline_job_request(build, argv, staging).pipeline)


def load_pins(path: Optional[str] = None) -> Dict[str, Dict[str, dict]]:
    with open(path or PINS_PATH, encoding="utf-8") as f:
        return json.load(f)["jobs"]


def render_pins(jobs: Dict[str, Dict[str, StatefulStep]]) -> str:
    document = {
        "about": "Stateful steps per job, pinned for Dataflow --update: regenerate with "
                 "python -m templates.stateful_steps --write (see its docstring).",
        "jobs": {job: {name: step.pin() for name, step in steps.items()} for job, steps in jobs.items()},
    }
    return json.dumps(document, indent=2, sort_keys=False) + "\n"


def differences(pinned: Dict[str, dict], current: Dict[str, StatefulStep]) -> List[str]:
    """Each way ``current`` differs from ``pinned``, as a line a person can act on."""
    lines = []
    for name in sorted(set(pinned) - set(current)):
        lines.append(f"gone or renamed: {name}")
    for name in sorted(set(current) - set(pinned)):
        lines.append(f"new: {name}")
    for name in sorted(set(pinned) & set(current)):
        now = current[name].pin()
        for field in ("key_coder", "state", "timers"):
            if pinned[name].get(field) != now[field]:
                lines.append(f"{field} changed: {name}: {pinned[name].get(field)} -> {now[field]}")
    return lines


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m templates.stateful_steps", description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help=f"re-pin: rewrite {os.path.relpath(PINS_PATH, ROOT)}")
    args = parser.parse_args(argv)
    current = {job: current_steps(job) for job in JOBS}
    pinned = load_pins() if os.path.exists(PINS_PATH) else {}
    changed = False
    for job, steps in current.items():
        print(f"{job}:")
        for step in steps.values():
            print(f"  {step.name}\n    key {step.key_coder}; state {dict(step.state)}; timers {list(step.timers)}")
        for line in differences(pinned.get(job, {}), steps):
            changed = True
            print(f"  differs from the pins: {line}")
    if args.write:
        with open(PINS_PATH, "w", encoding="utf-8") as f:
            f.write(render_pins(current))
        print(f"wrote {os.path.relpath(PINS_PATH, ROOT)}")
    elif changed:
        print("the pins are out of date: --write to re-pin (see the README on updating a running job)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
