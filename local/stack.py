"""The streaming job on the local stack, as a user runs it, for the demo and the tests.

``JobOnLocalStack`` starts (or reuses) the Pub/Sub emulator, starts the Braze simulator with
one key per sync, creates the job's topics, writes the syncs file, runs
``python -m pipeline.stream`` as a subprocess on the BundleBasedDirectRunner, publishes, and
drains: it reads the outcome topic until every published event is accounted for, and the
dead-letter topic. Everything it started stops when the ``with`` block ends.

Keys reach the job as a user's would: ``env:KEY_<n>`` references by default, or, for the syncs
named in ``from_secret_manager``, ``projects/local/secrets/key-<n>/versions/1`` read from a
local Secret Manager (``local/secret_manager.py``) through ``SECRET_MANAGER_EMULATOR_HOST``.
``key_values`` gives a sync a key of the test's choosing (a broken one, say) instead of a
random one; the simulator accepts only keys that could be sent in a header.
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
from typing import Callable, Collection, Dict, List, Optional, Sequence, Tuple

import orjson
import yaml

from local.accounting import Reconciler, event_sources
from local.braze_sim import BrazeSimulator, SimClient
from local.pubsub_emulator import PubSubEmulator
from transforms.dead_letters import sources_of
from transforms.scrub import renderings
from transforms.secrets import EMULATOR_HOST_ENV, key_problem



def stop_process_group(job: Optional[subprocess.Popen], timeout_seconds: float = 15.0) -> None:
    """End a job started in its own process group (``start_new_session``): SIGTERM, then SIGKILL
    if it has not ended within ``timeout_seconds``. Nothing to do when it already ended."""
    if job is not None and job.poll() is None:
        os.killpg(job.pid, signal.SIGTERM)
        try:
            job.wait(timeout=timeout_seconds)
        except subprocess.TimeoutExpired:
            os.killpg(job.pid, signal.SIGKILL)
            job.wait()

class JobFailed(RuntimeError):
    pass


class JobOnLocalStack(contextlib.AbstractContextManager):
    """``syncs``: the syncs document with ``{url}`` for the simulator's URL; each sync gets a
    key of its own (``key_values``: sync index → the key to use instead of a random one), read
    from ``env:KEY_<n>``, or from the local Secret Manager for the indexes in
    ``from_secret_manager``. ``references[n]`` is the reference the syncs file names."""

    def __init__(self, syncs: dict, *, emulator: Optional[PubSubEmulator] = None, job_args: Sequence[str] = (),
                 sim_options: Optional[dict] = None, key_values: Optional[Dict[int, str]] = None,
                 from_secret_manager: Collection[int] = (), log_path: Optional[str] = None):
        """``log_path``: where the job's output goes, kept after the block (the caller owns it);
        by default a file in the block's temporary directory, removed with it."""
        self._syncs = syncs
        self._log_path = log_path
        self._emulator = emulator
        self._job_args = list(job_args)
        self._sim_options = sim_options or {}
        self._key_values = dict(key_values or {})
        self._from_secret_manager = set(from_secret_manager)
        self._stack = contextlib.ExitStack()
        self.keys = {}  # KEY_<n> → the key of sync n, wherever the job reads it from
        self.references: List[str] = []
        self.published: List[Tuple[str, bytes]] = []
        self.dead_letters: list = []
        self.outcome_records: List[bytes] = []  # the outcome topic's messages, as published
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
        self.keys = {f"KEY_{i}": self._key_values.get(i, secrets.token_hex(16)) for i in range(len(names))}
        sendable = [key for key in self.keys.values() if key_problem(key.strip()) is None]
        self.sim = stack.enter_context(BrazeSimulator(api_keys=sendable, **self._sim_options))
        env = {name: key for i, (name, key) in enumerate(self.keys.items()) if i not in self._from_secret_manager}
        self.references = [f"env:KEY_{i}" for i in range(len(names))]
        if self._from_secret_manager:
            from local.secret_manager import LocalSecretManager

            secret_manager = stack.enter_context(LocalSecretManager())
            for i in sorted(self._from_secret_manager):
                self.references[i] = secret_manager.add_version(f"projects/local/secrets/key-{i}", self.keys[f"KEY_{i}"])
            env[EMULATOR_HOST_ENV] = secret_manager.address
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
            sync["api_key"] = self.references[i]
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
                                        env={**os.environ, **env}, start_new_session=True)
        stack.callback(self._stop_job)
        self.reconciler = Reconciler([], names)

    def __exit__(self, *exc) -> None:
        self._stack.close()

    def _stop_job(self) -> None:
        stop_process_group(self.job)

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
                self.outcome_records.append(message.data)
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
        lettered = {s for m in self.dead_letters for s in sources_of(m.attributes)}
        return any(source not in lettered for source in self.reconciler.dead_lettered_sources())

    def log_text(self) -> bytes:
        with open(self.log_path, "rb") as f:
            return f.read()

    def log_tail(self, lines: int = 30) -> str:
        return b"\n".join(self.log_text().splitlines()[-lines:]).decode("utf-8", "replace")

    def keys_in(self, blob: bytes) -> List[str]:
        """Names of the keys that appear in ``blob`` in any rendering: raw, ``repr``, JSON,
        URL-encoded (``transforms.scrub.renderings``). Must be none."""
        return [name for name, key in self.keys.items()
                if any(form.encode("utf-8", "surrogatepass") in blob for form in renderings(key))]
