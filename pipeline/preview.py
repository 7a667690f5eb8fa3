"""See what a syncs file would send for sample events, without sending anything.

    python -m pipeline.preview --sync_config syncs.yaml --events sample.jsonl [--json]

It runs the job's own graph (``pipeline.graph.EventsToBraze``: parse, dedup, route, filters,
identify, track, packing and the sink's ordering) on Beam's bounded in-process FnApiRunner,
with every enabled sync switched to shadow mode (``transforms.shadow``), so the sink builds each
request body exactly as it would post it and hands it over instead. Nothing reaches Braze and
no key is read. Then it prints, per sync, the requests with their bodies (the key shown as
``***``) and every event the sync would not send, with the rule that skipped it or the reason it
would be dead-lettered (``pipeline.preview_report``). ``--json`` prints one JSON object per line.

The sample: one Pub/Sub message per non-blank line (an event or a JSON array of events, either
shape the job reads), with the line number as its message id, so each event's source
(``<line>/<index>``) leads back to its line, published ``PUBLISHED_SECONDS_AGO`` before the
preview starts (an event without a time of its own gets that time, as the job gives it the
publish time). Not "now": the in-process runner runs a processing-time timer (dedup's, identify's
expiry) as soon as the watermark hold it sets is past, and such a timer holds the watermark at
the time of the element that set it; a sample stamped "now" would make the run wait for the
clock and then fail. The options that change what is sent (batching, dedup, arrays,
endpoints) are the job's, with its defaults.
A bounded run ends with every timer fired: each user's updates in the sample are applied in
event-time order and leave together, as a burst within ``--reorder_lateness_seconds`` would.

Exit status: 0 when it ran (whatever it found), 2 for a bad command line, syncs file or sample.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import threading
import time
import uuid
from typing import Dict, List, Optional, Sequence, Tuple

import apache_beam as beam
from apache_beam.io.gcp.pubsub import PubsubMessage
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.transforms.window import TimestampedValue

from pipeline.cli import help_text, usable_argv
from pipeline.config import SHADOW, ConfigError, Sync, load_syncs, require_enabled_syncs
from pipeline.graph import EventsToBraze
from pipeline.local_runner import without_fnapi_state_cache
from pipeline.options import StreamOptions, _bool
from pipeline.preview_report import Preview, json_lines, table
from transforms.parse import parse_message
from transforms.records import ParsedEvent

__all__ = ["PreviewOptions", "JOB_OPTIONS", "SampleError", "read_sample", "sample_messages", "graph_settings",
           "preview", "run"]

PROG = "python -m pipeline.preview"
DESCRIPTION = ("Run the streaming job's steps on sample events, every sync in shadow mode, and print per sync the "
               "Braze requests it would send (bodies in full, the key shown as ***) and each event it would not send, "
               "with the rule or the dead-letter reason. Nothing is sent, no key is read.")
RUNNER = "FnApiRunner"
PUBLISHED_SECONDS_AGO = 600  # see the module docstring
# The streaming job's options that change what the preview shows; the rest (Pub/Sub, retries,
# outages) only matter when sending.
JOB_OPTIONS = ("sync_config", "allow_insecure_endpoints", "braze_batch_limit_mode", "batch_shards_per_sync",
               "dedup_window_minutes", "braze_max_array_length")
REQUIRED = ("sync_config", "events")


class PreviewOptions:
    """The preview's own options (not a Beam options class: no job reads them)."""

    @classmethod
    def _add_argparse_args(cls, parser):
        group = parser.add_argument_group("preview")
        group.add_argument(
            "--events",
            help="The sample: a file of Amplitude events, one Pub/Sub message per line (an event or a JSON "
            "array of events, HTTP V2 or Export shape), as `python -m local.generate --out` writes it.",
        )
        group.add_argument(
            "--json",
            type=_bool, nargs="?", const=True, default=False,
            help='One JSON object per line instead of the table: {"sync": S, "request": BODY} per request, '
            '{"sync": S, "line": N, "insert_id": ID, "outcome": "skipped"|"dead_lettered", "reason": R} per '
            "event a sync would not send (sync null before routing).",
        )


OPTION_SETS = [PreviewOptions, (StreamOptions, JOB_OPTIONS)]


def _parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    PreviewOptions._add_argparse_args(parser)
    StreamOptions._add_argparse_args(parser)  # noqa: SLF001 - the job's declarations, defaults included
    values, _ = parser.parse_known_args(list(argv))  # usable_argv has refused anything else
    return values


# --------------------------------------------------------------------------------------------
# The sample


class SampleError(ValueError):
    pass


def read_sample(path: str) -> List[Tuple[int, bytes]]:
    """``(line number, bytes)`` of each non-blank line of the sample file."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise SampleError(f"cannot read the sample {path}: {e.strerror or e}") from None
    lines = [(n, line.rstrip(b"\r")) for n, line in enumerate(data.split(b"\n"), 1)]
    lines = [(n, line) for n, line in lines if line.strip()]
    if not lines:
        raise SampleError(f"the sample {path} holds no events (one event or JSON array of events per line)")
    return lines


def _message(line: Tuple[int, bytes], publish_time_ms: int):
    number, data = line
    return TimestampedValue(PubsubMessage(data, {}, message_id=str(number)), publish_time_ms / 1000.0)


def sample_messages(pipeline: beam.Pipeline, lines: Sequence[Tuple[int, bytes]], publish_time_ms: int):
    """The sample as the job's input: one Pub/Sub message per line, its id the line number,
    published at ``publish_time_ms``."""
    return (pipeline
            | "CreateSampleLines" >> beam.Create(list(lines), reshuffle=False)
            | "MakePubsubMessages" >> beam.Map(_message, publish_time_ms))


def insert_ids(lines: Sequence[Tuple[int, bytes]], publish_time_ms: int) -> Tuple[Dict[str, Optional[str]], int]:
    """``(source → insert id, events)``, read with the job's own parser (the same pure function)."""
    ids: Dict[str, Optional[str]] = {}
    for number, data in lines:
        for result in parse_message(data, str(number), publish_time_ms):
            if isinstance(result, ParsedEvent):
                ids[result.source] = result.insert_id
            else:
                ids[result[0]] = None
    return ids, len(ids)


# --------------------------------------------------------------------------------------------
# The run


def graph_settings(values) -> dict:
    """``EventsToBraze``'s arguments from the job's options that shape what is sent."""
    return dict(limit_mode=values.braze_batch_limit_mode, shards=values.batch_shards_per_sync,
                dedup_window_seconds=values.dedup_window_minutes * 60.0,
                max_array_length=values.braze_max_array_length)


_RUNS: Dict[str, Dict[str, list]] = {}
_RUNS_LOCK = threading.Lock()


def _collect(element, run_id: str, name: str) -> None:
    # Module-level, so Beam pickles it by reference: the in-process runner appends here.
    with _RUNS_LOCK:
        _RUNS[run_id][name].append(element)


def _no_key(reference: str) -> str:
    raise RuntimeError("the preview reads no key")  # never called: every sync is in shadow mode


def preview(all_syncs: Sequence[Sync], lines: Sequence[Tuple[int, bytes]], *,
            publish_time_ms: Optional[int] = None, **settings) -> Preview:
    """Run the job's graph on the sample, every enabled sync in shadow mode; collect what it made.
    ``settings``: more ``EventsToBraze`` arguments (``graph_settings``)."""
    started = time.monotonic()
    if publish_time_ms is None:
        publish_time_ms = int((time.time() - PUBLISHED_SECONDS_AGO) * 1000)
    syncs = tuple(dataclasses.replace(s, mode=SHADOW) for s in require_enabled_syncs(all_syncs, "<syncs>"))
    run_id = uuid.uuid4().hex
    _RUNS[run_id] = {"requests": [], "outcomes": [], "dead_letters": []}
    without_fnapi_state_cache()
    try:
        with beam.Pipeline(options=PipelineOptions(flags=[], runner=RUNNER)) as p:
            results = sample_messages(p, lines, publish_time_ms) | "EventsToBraze" >> EventsToBraze(
                syncs, resolve_key=_no_key, **settings)
            for name, output in (("requests", "shadow"), ("outcomes", "outcomes"), ("dead_letters", "dead_letters")):
                results[output] | "Collect" + name.title().replace("_", "") >> beam.Map(_collect, run_id, name)
        collected = _RUNS[run_id]
    finally:
        _RUNS.pop(run_id, None)
    ids, events = insert_ids(lines, publish_time_ms)
    return Preview(tuple(all_syncs), tuple(collected["requests"]), tuple(collected["outcomes"]),
                   tuple(collected["dead_letters"]), ids, len(lines), events, time.monotonic() - started)


def _help() -> str:
    text = help_text(PROG, DESCRIPTION, OPTION_SETS, required=REQUIRED,
                     usage=f"{PROG} --sync_config=FILE --events=SAMPLE.jsonl [--json] [options]")
    # The shared footer speaks of a job's Beam options; here they are accepted and ignored.
    text = text[:text.rindex("\nBooleans take")]
    return text + ("\nBooleans take --name, --name=true or --name=false. Beam's own options (--runner, ...) are "
                   "accepted and\nignored: the preview always runs in this process, on Beam's FnApiRunner.\n")


def run(argv: Optional[List[str]] = None, out=None, err=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    out = out if out is not None else sys.stdout
    err = err if err is not None else sys.stderr
    if "-h" in argv or "--help" in argv:
        print(_help(), end="", file=out)
        return 0
    if not usable_argv(argv, OPTION_SETS, PROG, err=err):
        return 2
    values = _parse(argv)
    missing = [f"--{name} is required" for name in REQUIRED if not getattr(values, name)]
    if missing:
        print("\n".join(f"{PROG}: {m}" for m in missing) + f"\n{PROG}: `{PROG} --help` lists its options", file=err)
        return 2
    try:
        all_syncs = load_syncs(values.sync_config, allow_insecure_endpoints=values.allow_insecure_endpoints)
        lines = read_sample(values.events)
        result = preview(all_syncs, lines, **graph_settings(values))
    except (ConfigError, SampleError, ValueError) as e:
        print(f"{PROG}: {e}", file=err)
        return 2
    rendered = json_lines(result) if values.json else table(result)
    out.write("".join(line + "\n" for line in rendered))
    return 0


if __name__ == "__main__":
    # Run the imported module, not this __main__ copy: Beam pickles __main__'s functions by
    # value, so _collect would fill a copy of _RUNS instead of this process's.
    from pipeline.preview import run as _run

    sys.exit(_run())
