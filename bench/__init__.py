"""`make bench` / `python -m bench [PART ...]`: how fast and how cheap the job is, as numbers.

Every figure is measured on one fixed, seeded corpus from ``local.generate`` and, where it is a
speed, as a ratio against a baseline measured in the same run (the machines are shared and
noisy, so a ratio travels better than an absolute figure). Parts, one module each:

    core             our pure per-event code vs a decode+encode floor, in-process; profiled
    beam_batch       the whole graph (EventsToBraze) on the FnApiRunner vs a passthrough pipeline
    streaming        the real job (python -m pipeline.stream) on emulator + simulator at a fixed rate
    sink             WriteToBraze alone against a simulator answering in 100 ms
    data_points      billable attribute writes: our job vs a forwarder without state
    naive_forwarder  one event per request, as a hand-written push handler would send it

Results go to ``bench/results.json`` (merged, so one part can be re-run alone) and a short
table on stdout; the streaming part also draws ``bench/latency.png``. Benchmarks are a
command, not tests: nothing here asserts on a timing.
"""

PARTS = ("core", "beam_batch", "streaming", "sink", "data_points", "naive_forwarder")
