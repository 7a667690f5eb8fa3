"""Small state objects written with compare-and-swap, locally or on GCS.

The cohort job keeps a few small objects that several runs may touch at once: the pointer to
the last successful membership, a run's lease, the month's download count. Each is read with
its *version* and written only if the version is still the one read (``write(..., if_version)``
returns False otherwise), so two runs can never both win, and a reader never sees half an
object:

* GCS (``gs://``): one object write is atomic; the version is the object's generation and the
  write uses ``if_generation_match`` (0: only if absent).
* A local path: the new content goes to a temporary file in the same directory and replaces the
  old one with ``os.replace`` (atomic on POSIX); the check and the replace happen under an
  ``fcntl`` lock on a sidecar ``.lock`` file. The version is the file's mtime, size and inode.

Large files (a membership) are written by Beam and never rewritten: a new one per run, and the
small pointer object switches to it.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from typing import NamedTuple, Optional

__all__ = ["ABSENT", "Versioned", "LocalObjects", "GcsObjects", "objects_for"]

ABSENT = "0"  # the version of an object that does not exist (GCS's generation 0)


class Versioned(NamedTuple):
    data: Optional[bytes]  # None: the object does not exist
    version: str


class LocalObjects:
    """Compare-and-swap on the local filesystem (see the module docstring)."""

    def read(self, path: str) -> Versioned:
        try:
            with open(path, "rb") as f:
                stat = os.fstat(f.fileno())
                return Versioned(f.read(), _local_version(stat))
        except FileNotFoundError:
            return Versioned(None, ABSENT)

    def write(self, path: str, data: bytes, if_version: Optional[str] = None) -> bool:
        directory = os.path.dirname(path) or "."
        os.makedirs(directory, exist_ok=True)
        with _locked(path):
            if if_version is not None and self.read(path).version != if_version:
                return False
            fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, path)
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
                raise
        return True

    def delete(self, path: str, if_version: Optional[str] = None) -> bool:
        with _locked(path):
            if if_version is not None and self.read(path).version != if_version:
                return False
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        return True


def _local_version(stat) -> str:
    return f"{stat.st_mtime_ns}-{stat.st_size}-{stat.st_ino}"


@contextlib.contextmanager
def _locked(path: str):
    import fcntl

    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path + ".lock", "a+b") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


class GcsObjects:
    """Compare-and-swap on GCS with generation preconditions (google-cloud-storage, which
    apache-beam[gcp] brings). ``client`` is injectable for tests."""

    def __init__(self, client=None):
        self._client = client

    @property
    def client(self):
        if self._client is None:
            from google.cloud import storage

            self._client = storage.Client()
        return self._client

    def _blob(self, path: str):
        if not path.startswith("gs://"):
            raise ValueError(f"not a gs:// path: {path!r}")
        bucket, _, name = path[len("gs://"):].partition("/")
        return self.client.bucket(bucket).blob(name)

    def read(self, path: str) -> Versioned:
        from google.api_core import exceptions

        blob = self._blob(path)
        try:
            data = blob.download_as_bytes()
        except exceptions.NotFound:
            return Versioned(None, ABSENT)
        return Versioned(data, str(blob.generation))

    def write(self, path: str, data: bytes, if_version: Optional[str] = None) -> bool:
        from google.api_core import exceptions

        blob = self._blob(path)
        kwargs = {} if if_version is None else {"if_generation_match": int(if_version)}
        try:
            blob.upload_from_string(data, content_type="application/json", **kwargs)
        except exceptions.PreconditionFailed:
            return False
        return True

    def delete(self, path: str, if_version: Optional[str] = None) -> bool:
        from google.api_core import exceptions

        blob = self._blob(path)
        kwargs = {} if if_version is None else {"if_generation_match": int(if_version)}
        try:
            blob.delete(**kwargs)
        except exceptions.NotFound:
            return True
        except exceptions.PreconditionFailed:
            return False
        return True


_GCS: Optional[GcsObjects] = None


def objects_for(path: str):
    """The store for a path: GCS for ``gs://``, the local filesystem for a plain path."""
    global _GCS
    if path.startswith("gs://"):
        if _GCS is None:
            _GCS = GcsObjects()
        return _GCS
    if "://" in path:
        raise ValueError(f"state must be a local path or gs:// URI, got {path!r}")
    return LocalObjects()
