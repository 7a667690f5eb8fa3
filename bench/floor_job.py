"""``python -m bench.floor_job [the job's options]``: the same-shape floor (``bench.floor``) as a
streaming job, Pub/Sub in and Braze (the simulator) out, as ``python -m pipeline.stream`` runs
the job; the benchmark's streaming part starts it."""
from __future__ import annotations

import sys
from typing import List, Optional

import apache_beam as beam
from apache_beam.io.gcp.pubsub import ReadFromPubSub
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from bench.floor import SameShapeFloor
from pipeline.config import enabled_syncs, load_syncs
from pipeline.local_runner import faster_bundle_based_direct_runner
from pipeline.options import StreamOptions


def run(argv: Optional[List[str]] = None) -> int:
    options = PipelineOptions(list(sys.argv[1:] if argv is None else argv))
    opts = options.view_as(StreamOptions)
    standard = options.view_as(StandardOptions)
    standard.streaming = True
    standard.runner = standard.runner or "BundleBasedDirectRunner"
    syncs = enabled_syncs(load_syncs(opts.sync_config, allow_insecure_endpoints=opts.allow_insecure_endpoints))
    pipeline = beam.Pipeline(options=options)
    (pipeline
     | "ReadFromPubSub" >> ReadFromPubSub(subscription=opts.input_subscription, with_attributes=True)
     | "SameShapeFloor" >> SameShapeFloor(
         syncs, shards=opts.batch_shards_per_sync, max_batch_wait_seconds=opts.max_batch_wait_seconds,
         dedup_window_seconds=opts.dedup_window_minutes * 60.0, lateness_seconds=opts.reorder_lateness_seconds,
         user_state_ttl_days=opts.user_state_ttl_days, timeout_seconds=opts.braze_timeout_seconds))
    if standard.runner == "BundleBasedDirectRunner":
        faster_bundle_based_direct_runner()
    pipeline.run().wait_until_finish()
    return 0


if __name__ == "__main__":
    sys.exit(run())
