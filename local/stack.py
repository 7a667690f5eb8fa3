"""The streaming job on the local stack, as a user runs it, for the demo and the tests.

``JobOnLocalStack`` starts (or reuses) the Pub/Sub emulator, starts the Braze simulator with
one key per sync, creates the job's topics, writes the syncs file, runs
``python -m pipeline.stream`` as a subprocess on the BundleBasedDirectRunner, publishes, and
drains: it reads the outcome topic until every published event is accounted for, and the
dead-letter topic. Everything it started stops when the ``with`` block ends.
"""
from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from typing import Callable, List, Optional, Sequence, Tuple

import orjson
import yaml

from local.accounting import Reconciler, event_sources
from local.braze_sim import BrazeSimulator, SimClient
from local.pubsub_emulator import PubSubEmulator


class JobFailed(RuntimeError):
    pass


class JobOnLocalStack(contextlib.AbstractContextManager):
    """``syncs``: the syncs document with ``{url}`` for the simulator's URL and ``env:KEY_<n>``
    references; each sync gets a key of its own."""

    def __init__(self, syncs: dict, *, emulator: Optional[PubSubEmulator] = None, job_args: Sequence[str] = (),
                 sim_options: Optional[dict] = None, log_path: Optional[str] = None):
        """``log_path``: where the job's output goes, kept after the block (the caller owns it);
        by default a file in the block's temporary directory, removed with it."""
        self._syncs = syncs
        self._log_path = log_path
        self._emulator = emulator
        self._job_args = list(job_args)
        self._sim_options = sim_options or {}
        self._stack = contextlib.ExitStack()
        self.keys = {}
        self.published: List[Tuple[str, bytes]] = []
        self.dead_letters: list = []
        self.reconciler: Optional[Reconciler] = None
        self.job: Optional[subprocess.Popen] = None

    # -- lifecycle ------------------------------------------------------------------------------

    def __enter__(self) -> "JobOnLocalStack":
        try:
            self._start()
        except BaseException:
            self._stack.close()
            raise
        return self

    def _start(self) -> None:
        stack = self._stack
        self.tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="amplitude-braze-"))
        if self._emulator is None:
            self._emulator = stack.enter_context(PubSubEmulator())
        self.emulator = self._emulator
        names = [s["name"] for s in self._syncs["syncs"]]
        self.keys = {f"KEY_{i}": secrets.token_hex(16) for i in range(len(names))}
        self.sim = stack.enter_context(BrazeSimulator(api_keys=list(self.keys.values()), **self._sim_options))
        self.client = SimClient(self.sim.url)
        run = secrets.token_hex(3)  # names of its own, so a shared emulator is fine
        self._topics = {n: f"{n}-{run}" for n in ("events", "dead-letters", "outcomes")}
        self._subs = {n: f"{n}-sub-{run}" for n in self._topics}
        for name, topic in self._topics.items():
            self.emulator.create_topic(topic)
            self.emulator.create_subscription(self._subs[name], topic)
        syncs_path = os.path.join(self.tmp, "syncs.yaml")
        document = orjson.loads(orjson.dumps(self._syncs).replace(b"{url}", self.sim.url.encode()))
        for i, sync in enumerate(document["syncs"]):
            sync["api_key"] = f"env:KEY_{i}"
        with open(syncs_path, "w") as f:
            yaml.safe_dump(document, f, sort_keys=False)
        self.log_path = self._log_path or os.path.join(self.tmp, "job.log")
        command = [
            sys.executable, "-m", "pipeline.stream",
            f"--input_subscription={self.emulator.subscription_path(self._subs['events'])}",
            f"--dead_letter_topic={self.emulator.topic_path(self._topics['dead-letters'])}",
            f"--outcome_topic={self.emulator.topic_path(self._topics['outcomes'])}",
            f"--sync_config={syncs_path}",
            "--allow_insecure_endpoints",
            "--runner=BundleBasedDirectRunner",
            *self._job_args,
        ]
        with open(self.log_path, "wb") as log:
            self.job = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                        env={**os.environ, **self.keys}, start_new_session=True)
        stack.callback(self._stop_job)
        self.reconciler = Reconciler([], names)

    def __exit__(self, *exc) -> None:
        self._stack.close()

    def _stop_job(self) -> None:
        job = self.job
        if job is not None and job.poll() is None:
            os.killpg(job.pid, signal.SIGTERM)
            try:
                job.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(job.pid, signal.SIGKILL)
                job.wait()

    # -- use ------------------------------------------------------------------------------------

    def publish(self, datas: Sequence[bytes]) -> List[str]:
        message_ids = self.emulator.publish(self._topics["events"], list(datas))
        self.published.extend(zip(message_ids, datas))
        for mid, data in zip(message_ids, datas):
            self.reconciler.sources.extend(event_sources(mid, data))
        return message_ids

    def drain(self, deadline_seconds: float, on_poll: Optional[Callable[["JobOnLocalStack"], None]] = None) -> dict:
        """Read outcomes and dead letters until every published event is accounted for."""
        deadline = time.monotonic() + deadline_seconds
        while self.reconciler.pending() and time.monotonic() < deadline:
            if self.job.poll() is not None:
                raise JobFailed(f"the job exited with code {self.job.returncode}:\n{self.log_tail()}")
            for message in self.emulator.pull(self._subs["outcomes"], max_messages=1000, timeout=2):
                self.reconciler.add_json(message.data)
            self.dead_letters.extend(self.emulator.pull(self._subs["dead-letters"], max_messages=1000, timeout=0.5))
            if on_poll is not None:
                on_poll(self)
        # Dead letters and outcomes travel on separate topics: wait until every dead-lettered
        # source has its dead letter too.
        while self._dead_letters_missing() and time.monotonic() < deadline:
            self.dead_letters.extend(self.emulator.pull(self._subs["dead-letters"], max_messages=1000, timeout=1))
        return self.reconciler.totals()

    def _dead_letters_missing(self) -> bool:
        lettered = {s for m in self.dead_letters for s in orjson.loads(m.data)["sources"]}
        return any(source not in lettered for source in self.reconciler.dead_lettered_sources())

    def log_text(self) -> bytes:
        with open(self.log_path, "rb") as f:
            return f.read()

    def log_tail(self, lines: int = 30) -> str:
        return b"\n".join(self.log_text().splitlines()[-lines:]).decode("utf-8", "replace")

    def keys_in(self, blob: bytes) -> List[str]:
        """Names of the keys whose value appears in ``blob`` (must be none)."""
        return [name for name, key in self.keys.items() if key.encode() in blob]
