"""`make bench` / `python -m bench [PART ...]`: how fast and how cheap the job is, as numbers.

Every figure is measured on one fixed, seeded corpus from ``local.generate`` and, where it is a
speed, in CPU seconds of the measuring process and as a ratio against a baseline measured in
the same run (the machines are shared and noisy, so a ratio travels better than an absolute
figure). Parts, one module each:

    core             our pure per-event code (CPU µs per event, 2 syncs), in-process; profiled
    beam_batch       the whole graph (EventsToBraze) on the FnApiRunner vs the same-shape floor
                     (bench.floor: the keyed stages with trivial bodies) and a passthrough;
                     the user state each stage reads and writes (bench.state_meter)
    scale            the whole graph's CPU cost and state bytes per event at 10,000 and 100,000
                     events (make bench-scale: and 1,000,000)
    streaming        the real job (python -m pipeline.stream) and the same-shape floor on the
                     BundleBasedDirectRunner, emulator + simulator, at a fixed offered rate
    sink             WriteToBraze against a simulator answering in 100 ms; one key's drain after an
                     outage by in-flight limit (bench.sink_drain)
    data_points      billable attribute writes: our job vs a forwarder without state
    naive_forwarder  one event per request, as a hand-written push handler would send it

Results go to ``bench/results.json`` (merged, so one part can be re-run alone) and a short
table on stdout; the streaming part also draws ``bench/latency.png``. Benchmarks are a
command, not tests: nothing here asserts on a timing.
"""

PARTS = ("core", "beam_batch", "scale", "streaming", "sink", "data_points", "naive_forwarder")
