"""Start, use and stop the real Google Pub/Sub emulator for tests, the demo and the benchmark.

One helper so every caller starts the emulator the same way and, above all, stops it: the
emulator is a Java process behind a gcloud wrapper, so it runs in its own process group and
``stop()`` ends that whole group (also from an ``atexit`` handler when a caller forgets).

    with PubSubEmulator(project="local-project") as emu:   # port 0 picks a free port
        emu.create_topic("events")
        emu.create_subscription("events-sub", "events")
        emu.publish("events", [b'{"event_type": "x"}'])
        emu.pull_until("events-sub", 1, deadline_seconds=10)

CLI: ``python -m local.pubsub_emulator --port 8085 --topic events --subscription events-sub:events``.
"""
from __future__ import annotations

import argparse
import atexit
import os
import signal
import subprocess
import sys
import tempfile
import time
from typing import Callable, Dict, List, Optional, Sequence, Union

# The process's prerequisites and probes; the names tests use stay importable from here.
from local.emulator_process import INSTALL_HINT, EmulatorUnavailable  # noqa: F401
from local.emulator_process import answers as _answers
from local.emulator_process import check_prerequisites as _check_prerequisites
from local.emulator_process import free_port as _free_port
from local.emulator_process import group_running as _group_running
from local.emulator_process import port_in_use as _port_in_use

__all__ = ["PubSubEmulator", "EmulatorUnavailable", "INSTALL_HINT"]

ENV_VAR = "PUBSUB_EMULATOR_HOST"
DEFAULT_START_TIMEOUT_SECS = 60.0
STOP_TIMEOUT_SECS = 10.0
_OUTPUT_TAIL_CHARS = 3000
_EMPTY_BODY_ATTRIBUTES = {"empty_body": "true"}
_PORT_RETRIES = 3  # a port picked by us can be taken by someone else before Java binds it


class PubSubEmulator:
    """The Pub/Sub emulator as a context manager, with small helpers built on the real client.

    Clients are created lazily after ``start()`` because google-cloud-pubsub reads
    ``PUBSUB_EMULATOR_HOST`` when a client is created.
    """

    def __init__(
        self,
        project: str = "local-project",
        port: int = 0,
        start_timeout_secs: float = DEFAULT_START_TIMEOUT_SECS,
    ) -> None:
        self.project = project
        self.port = port
        self.start_timeout_secs = start_timeout_secs
        self.process: Optional[subprocess.Popen] = None
        self.startup_secs: Optional[float] = None
        self._tmpdir: Optional[tempfile.TemporaryDirectory] = None
        self._log = None
        self._previous_env: Optional[str] = None
        self._publisher = None
        self._subscriber = None

    # -- lifecycle -----------------------------------------------------------------------

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> Optional[int]:
        return self.process.pid if self.process else None

    def start(self) -> "PubSubEmulator":
        """Start the emulator and wait until it answers; sets ``PUBSUB_EMULATOR_HOST``."""
        if self.process is not None:
            return self
        gcloud = _check_prerequisites()
        pick_port = self.port == 0
        if not pick_port and _port_in_use(self.port):
            raise EmulatorUnavailable(f"port {self.port} on 127.0.0.1 is already in use; choose another or use port=0")
        began = time.monotonic()
        atexit.register(self.stop)  # before launching: even Ctrl-C during the wait must not leak Java
        for attempt in range(_PORT_RETRIES if pick_port else 1):
            if pick_port:
                self.port = _free_port()
            try:
                self._launch(gcloud)
                break
            except BaseException as error:
                self.stop()
                if pick_port:
                    self.port = 0
                lost_port = "already in use" in str(error) or "BindException" in str(error)
                retry = isinstance(error, EmulatorUnavailable) and pick_port and lost_port
                if not retry or attempt == _PORT_RETRIES - 1:
                    raise
        self.startup_secs = time.monotonic() - began
        self._previous_env = os.environ.get(ENV_VAR)
        os.environ[ENV_VAR] = self.host
        return self

    def _launch(self, gcloud: str) -> None:
        self._tmpdir = tempfile.TemporaryDirectory(prefix="pubsub-emulator-")
        self._log = open(os.path.join(self._tmpdir.name, "emulator.log"), "w+b")
        data_dir = os.path.join(self._tmpdir.name, "data")  # gcloud writes env.yaml here
        os.mkdir(data_dir)
        command = [
            gcloud, "beta", "emulators", "pubsub", "start",
            f"--host-port={self.host}",
            f"--project={self.project}",
            f"--data-dir={data_dir}",
        ]
        env = dict(os.environ, CLOUDSDK_CORE_DISABLE_PROMPTS="1")
        self.process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # own process group, so stop() can end gcloud and Java together
        )
        deadline = time.monotonic() + self.start_timeout_secs
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise EmulatorUnavailable(
                    f"the Pub/Sub emulator exited with code {self.process.returncode} before answering "
                    f"on {self.host}. Its output ended with:\n{self.output_tail()}\n"
                    f"If something is missing: {INSTALL_HINT}"
                )
            if _answers(self.host, timeout_secs=0.5):
                return
            time.sleep(0.1)  # polling interval, not synchronisation: the loop has a deadline
        raise EmulatorUnavailable(
            f"the Pub/Sub emulator did not answer on {self.host} within {self.start_timeout_secs:.0f} s. "
            f"Its output ended with:\n{self.output_tail()}"
        )

    def output_tail(self, chars: int = _OUTPUT_TAIL_CHARS) -> str:
        """The end of the emulator's combined stdout/stderr, for error messages."""
        if self._log is None or self._log.closed:
            return ""
        self._log.flush()
        self._log.seek(0, os.SEEK_END)
        size = self._log.tell()
        self._log.seek(max(0, size - chars))
        return self._log.read().decode("utf-8", "replace")

    def stop(self) -> None:
        """End the process group we started and undo ``PUBSUB_EMULATOR_HOST``; safe to repeat."""
        # Close the gRPC channels first; a failure here must not keep Java running.
        for client in (self._publisher, self._subscriber):
            if client is not None:
                try:
                    client.transport.close()
                except Exception:
                    pass
        self._publisher = self._subscriber = None
        process, self.process = self.process, None
        if process is not None:
            self._end_group(process)
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._tmpdir is not None:
            self._tmpdir.cleanup()
            self._tmpdir = None
        if os.environ.get(ENV_VAR) == self.host:
            if self._previous_env is None:
                os.environ.pop(ENV_VAR, None)
            else:
                os.environ[ENV_VAR] = self._previous_env
        self._previous_env = None
        atexit.unregister(self.stop)

    @staticmethod
    def _end_group(process: subprocess.Popen) -> None:
        # SIGKILL at once: the emulator keeps everything in memory and its data dir is thrown
        # away, so a graceful JVM shutdown (about 1.5 s) would save nothing.
        pgid = process.pid  # start_new_session=True made the gcloud wrapper the group leader
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait(timeout=STOP_TIMEOUT_SECS)
        # Java was reparented to init when the wrapper died; wait until it no longer runs.
        deadline = time.monotonic() + STOP_TIMEOUT_SECS
        while _group_running(pgid) and time.monotonic() < deadline:
            time.sleep(0.02)

    def __enter__(self) -> "PubSubEmulator":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    # -- helpers on the real client ------------------------------------------------------

    @property
    def publisher(self):
        if self.process is None:
            raise RuntimeError("start() the emulator before using its clients")
        if self._publisher is None:
            from google.cloud import pubsub_v1

            self._publisher = pubsub_v1.PublisherClient()
        return self._publisher

    @property
    def subscriber(self):
        if self.process is None:
            raise RuntimeError("start() the emulator before using its clients")
        if self._subscriber is None:
            import grpc
            from google.cloud import pubsub_v1
            from google.pubsub_v1.services.subscriber.transports import SubscriberGrpcTransport

            # The library's emulator channel keeps gRPC's 4 MB receive limit; Pub/Sub's messages
            # go to 10 MB (a large dead letter), and production channels have no limit.
            channel = grpc.insecure_channel(self.host, options=[("grpc.max_receive_message_length", -1)])
            self._subscriber = pubsub_v1.SubscriberClient(transport=SubscriberGrpcTransport(channel=channel))
        return self._subscriber

    def topic_path(self, name: str) -> str:
        return f"projects/{self.project}/topics/{name}"

    def subscription_path(self, name: str) -> str:
        return f"projects/{self.project}/subscriptions/{name}"

    def create_topic(self, name: str) -> str:
        path = self.topic_path(name)
        self.publisher.create_topic(request={"name": path})
        return path

    def create_subscription(self, name: str, topic_name: str, ack_deadline_seconds: int = 60) -> str:
        path = self.subscription_path(name)
        self.subscriber.create_subscription(
            request={
                "name": path,
                "topic": self.topic_path(topic_name),
                "ack_deadline_seconds": ack_deadline_seconds,
            }
        )
        return path

    def publish(
        self,
        topic_name: str,
        datas: Sequence[bytes],
        attributes: Optional[Dict[str, str]] = None,
        timeout_secs: float = 60.0,
    ) -> List[str]:
        """Publish every body (the client batches them) and return the message ids in order.

        Pub/Sub refuses a message with neither data nor attributes, yet an empty body is one
        of the malformed inputs we test; such a message gets the attribute ``empty_body=true``.
        """
        topic = self.topic_path(topic_name)
        attributes = attributes or {}
        futures = [
            self.publisher.publish(topic, data, **(attributes or ({} if data else _EMPTY_BODY_ATTRIBUTES)))
            for data in datas
        ]
        return [future.result(timeout=timeout_secs) for future in futures]

    def pull(self, subscription_name: str, max_messages: int = 1000, timeout: float = 5.0) -> list:
        """One synchronous pull round; acks what it got and returns the ``PubsubMessage`` objects."""
        from google.api_core import exceptions

        try:
            response = self.subscriber.pull(
                request={
                    "subscription": self.subscription_path(subscription_name),
                    "max_messages": max_messages,
                    "return_immediately": True,  # deprecated on Pub/Sub, honoured by the emulator
                },
                timeout=timeout,
                retry=None,
            )
        except exceptions.DeadlineExceeded:
            return []
        received = list(response.received_messages)
        if received:
            self.subscriber.acknowledge(
                request={
                    "subscription": self.subscription_path(subscription_name),
                    "ack_ids": [message.ack_id for message in received],
                }
            )
        return [message.message for message in received]

    def pull_until(
        self,
        subscription_name: str,
        predicate_or_count: Union[int, Callable[[list], bool]],
        deadline_seconds: float,
        max_messages: int = 1000,
    ) -> list:
        """Pull until ``count`` messages arrived, or ``predicate(all_so_far)`` holds, or the deadline.

        Returns what arrived; the caller asserts on it, so a timeout shows what was missing.
        """
        if callable(predicate_or_count):
            done = predicate_or_count
        else:
            count = int(predicate_or_count)
            done = lambda got: len(got) >= count  # noqa: E731
        got: list = []
        deadline = time.monotonic() + deadline_seconds
        while not done(got):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            batch = self.pull(subscription_name, max_messages=max_messages, timeout=min(5.0, max(remaining, 0.1)))
            got.extend(batch)
            if not batch:
                time.sleep(min(0.05, max(remaining, 0)))  # back off between empty rounds
        return got


def _parse_subscription(text: str) -> tuple:
    name, sep, topic = text.partition(":")
    if not sep or not name or not topic:
        raise argparse.ArgumentTypeError(f"expected SUBSCRIPTION:TOPIC, got {text!r}")
    return name, topic


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m local.pubsub_emulator",
        description="Run the Pub/Sub emulator with topics and subscriptions until Ctrl-C or SIGTERM.",
    )
    parser.add_argument("--project", default="local-project")
    parser.add_argument("--port", type=int, default=8085, help="0 picks a free port")
    parser.add_argument("--topic", action="append", default=[], help="topic to create (repeatable)")
    parser.add_argument(
        "--subscription", action="append", default=[], type=_parse_subscription,
        help="SUBSCRIPTION:TOPIC to create (repeatable; the topic is created if not listed)",
    )
    args = parser.parse_args(argv)

    # SIGTERM ends the wait below the same way Ctrl-C does, so the finally block stops Java.
    signal.signal(signal.SIGTERM, _interrupt)
    emulator = PubSubEmulator(project=args.project, port=args.port)
    try:
        emulator.start()
    except EmulatorUnavailable as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    try:
        topics = list(dict.fromkeys(args.topic + [topic for _, topic in args.subscription]))
        for topic in topics:
            print(f"topic        {emulator.create_topic(topic)}")
        for name, topic in args.subscription:
            print(f"subscription {emulator.create_subscription(name, topic)}")
        print(f"started in {emulator.startup_secs:.1f} s (pid {emulator.pid}); in another shell:")
        print(f"export {ENV_VAR}={emulator.host}", flush=True)
        while emulator.process is not None and emulator.process.poll() is None:
            time.sleep(0.5)
        print("the emulator exited on its own:\n" + emulator.output_tail(), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        emulator.stop()


if __name__ == "__main__":
    sys.exit(main())
