"""The Pub/Sub emulator's process: what it needs installed, a free port, whether it answers, and
whether its process group still runs. Used by ``local.pubsub_emulator`` (which starts and stops
it); kept apart so that module holds the emulator's life and its client helpers.
"""
from __future__ import annotations

import os
import shutil
import socket
import urllib.error
import urllib.request

__all__ = ["INSTALL_HINT", "EmulatorUnavailable", "free_port", "port_in_use", "answers", "check_prerequisites",
           "group_running"]

INSTALL_HINT = (
    "install the Google Cloud CLI and its Pub/Sub emulator: "
    "apt-get install google-cloud-cli google-cloud-cli-pubsub-emulator "
    "(or: gcloud components install pubsub-emulator beta); "
    "it needs Java 11+: apt-get install openjdk-17-jre-headless"
)


class EmulatorUnavailable(RuntimeError):
    """The emulator cannot be started here; the message says what to install or fix."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def answers(host: str, timeout_secs: float = 1.0) -> bool:
    """True when something serves the emulator's HTTP root (it answers "Ok") at ``host``."""
    try:
        with urllib.request.urlopen(f"http://{host}/", timeout=timeout_secs) as response:
            return response.status == 200
    except (OSError, urllib.error.URLError):
        return False


def check_prerequisites() -> str:
    """Return the gcloud executable, or say exactly what is missing."""
    gcloud = shutil.which("gcloud")
    if gcloud is None:
        raise EmulatorUnavailable(f"`gcloud` is not on PATH; {INSTALL_HINT}")
    if shutil.which("java") is None:
        raise EmulatorUnavailable(f"`java` is not on PATH (the emulator is a Java program); {INSTALL_HINT}")
    # Only judge an SDK layout we recognise (bin/gcloud next to lib/gcloud.py); snap or other
    # wrappers fall through to the start itself, whose output we report if it fails.
    sdk_root = os.path.dirname(os.path.dirname(os.path.realpath(gcloud)))
    if os.path.isfile(os.path.join(sdk_root, "lib", "gcloud.py")) and not os.path.isdir(
        os.path.join(sdk_root, "platform", "pubsub-emulator")
    ):
        raise EmulatorUnavailable(f"the Pub/Sub emulator component is missing from {sdk_root}; {INSTALL_HINT}")
    return gcloud


def group_running(pgid: int) -> bool:
    """True while a process of the group is still running (zombies waiting for init don't count)."""
    if os.path.isdir("/proc/self"):
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat", "rb") as stat_file:
                    # "pid (comm) state ppid pgrp ...": comm may hold spaces, so split after ")".
                    fields = stat_file.read().rsplit(b")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != b"Z":
                return True
        return False
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
