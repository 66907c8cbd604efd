"""Recording traffic for the next job (`router.capture`), off the request's path.

A handler calls `CaptureSink.offer(record)`: a `put_nowait` on a bounded queue, nothing else, so a request
never waits on storage. One writer thread takes records from the queue, redacts them (the user's regular
expressions), appends them to the current JSONL file, rotates it by size and age, and deletes the oldest
files above the folder's size cap or past its retention. A full queue, a read-only or full volume, or a
failed upload drops records and counts them (`kubedistill_router_capture_dropped_total{reason}`); it never
fails a request or stops the router.

For `s3://` the files are written to a local spool folder and uploaded (fsspec, s3fs) when they are
rotated; a failed upload is retried at the next rotation while the spool stays under the size cap.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from kubedistill.api.studentdeployment import CaptureSpec
from kubedistill.capture import CaptureRecord, capture_file_name, is_capture_file
from kubedistill.redaction import compile_patterns, redact_patterns
from kubedistill.uris import local_path, parse_uri
from kubedistill_router.metrics import RouterMetrics

log = logging.getLogger("kubedistill.router")

QUEUE_FULL, WRITE_ERROR, UPLOAD_ERROR, CLOSED = "queue-full", "write-error", "upload-error", "closed"
RETENTION_CHECK_SECONDS = 60.0  # listing the folder on every write would cost more than the write
WARN_EVERY_SECONDS = 60.0  # a failing sink logs once a minute, not once a record
CONTENT_FIELDS = ("text", "messages", "student", "teacher")  # what came from the client or the models


class Remote:
    """An fsspec folder (s3://) that rotated files are uploaded to, with the same caps as a local folder."""

    def __init__(self, uri: str, fs: Any = None) -> None:
        if fs is None:
            try:
                import fsspec

                fs, root = fsspec.core.url_to_fs(uri)
            except ImportError:  # s3fs (or fsspec) missing: refused at start-up, before any request
                raise ValueError("router.capture.uri: s3:// needs fsspec and s3fs in the router image: "
                                 "`pip install 'kubedistill[router-s3]'`") from None
        else:
            root = uri.split("://", 1)[-1]
        self.uri, self.fs, self.root = uri, fs, root.rstrip("/")

    def upload(self, path: Path) -> None:
        self.fs.put(str(path), f"{self.root}/{path.name}")

    def enforce(self, max_total_bytes: int, oldest_allowed: float) -> int:
        """Delete the oldest capture files above the caps; returns how many."""
        entries = sorted((e for e in self.fs.ls(self.root, detail=True) if is_capture_file(e["name"].rsplit("/")[-1])),
                         key=lambda e: e["name"])
        total = sum(int(e.get("size") or 0) for e in entries)
        deleted = 0
        for entry in entries:
            name = entry["name"].rsplit("/")[-1]
            if total <= max_total_bytes and _started(name) >= oldest_allowed:
                break
            self.fs.rm(entry["name"])
            total -= int(entry.get("size") or 0)
            deleted += 1
        return deleted


def _started(name: str) -> float:
    """When a capture file was started, from its name (capture-YYYYmmddTHHMMSSZ-...)."""
    import calendar

    try:
        return float(calendar.timegm(time.strptime(name.split("-")[1], "%Y%m%dT%H%M%SZ")))
    except (IndexError, ValueError):
        return 0.0


class RotatingFiles:
    """Capture files in one folder: append, rotate by size and age, delete the oldest above the caps.
    Not thread-safe: the writer thread alone uses it."""

    def __init__(self, folder: Path, spec: CaptureSpec, writer: str, remote: Remote | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.folder, self.spec, self.writer, self.remote, self.clock = folder, spec, writer, remote, clock
        self.current: IO[bytes] | None = None
        self.current_path: Path | None = None
        self.current_size = 0
        self.current_records = 0
        self.opened_at = 0.0
        self.index = 0
        self.last_check = 0.0
        self.pending: dict[Path, int] = {}  # s3: closed files not uploaded yet, with their record counts
        self.on_lost: Callable[[str, int], None] = lambda reason, count: None

    def write(self, line: bytes) -> None:
        """Append one record (raises OSError when the folder cannot take it)."""
        now = self.clock()
        if self.current is not None and (self.current_size + len(line) > self.spec.max_file_bytes
                                         or now - self.opened_at >= self.spec.rotate_seconds):
            self.rotate()
        if self.current is None:
            self._open(now)
        assert self.current is not None
        try:
            self.current.write(line)
            self.current.flush()  # a crash loses at most the line being written
        except OSError:
            self._abandon()  # a half-written line stays; readers skip it. The next record starts a new file.
            raise
        self.current_size += len(line)
        self.current_records += 1
        if now - self.last_check >= RETENTION_CHECK_SECONDS:
            self.enforce(now)

    def tick(self) -> None:
        """Rotate a file that has been open for rotate_seconds, even when no record arrives."""
        if self.current is not None and self.clock() - self.opened_at >= self.spec.rotate_seconds:
            self.rotate()

    def _open(self, now: float) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.index += 1
        path = self.folder / capture_file_name(now, self.writer, self.index)
        self.current = path.open("ab")
        self.current_path, self.current_size, self.current_records, self.opened_at = path, 0, 0, now

    def _abandon(self) -> None:
        if self.current is not None:
            with contextlib.suppress(OSError):
                self.current.close()
        self.current = None

    def rotate(self) -> None:
        if self.current is None:
            return
        path, records = self.current_path, self.current_records
        self._abandon()
        if self.remote is not None and path is not None:
            self.pending[path] = records
            self._upload()
        self.enforce(self.clock())

    def _upload(self) -> None:
        assert self.remote is not None
        for path in sorted(self.pending):
            try:
                self.remote.upload(path)
            except Exception as error:  # the network or the bucket: try again at the next rotation
                log.warning("capture: uploading %s to %s failed (%s: %s); retrying at the next rotation",
                            path.name, self.remote.uri, type(error).__name__, error)
                return
            self.pending.pop(path)
            path.unlink(missing_ok=True)

    def enforce(self, now: float) -> None:
        """Delete the oldest files while the folder is above max_total_bytes or they are past retention."""
        self.last_check = now
        oldest_allowed = now - self.spec.retention_hours * 3600
        if self.remote is not None:
            try:
                self.remote.enforce(self.spec.max_total_bytes, oldest_allowed)
            except Exception as error:
                log.warning("capture: applying the caps to %s failed: %s", self.remote.uri, error)
        files = sorted((p for p in self.folder.glob("capture-*.jsonl") if is_capture_file(p.name)),
                       key=lambda p: p.name)
        sizes = {}
        for path in files:
            with contextlib.suppress(FileNotFoundError):  # another replica may have deleted it
                sizes[path] = path.stat().st_size
        total = sum(sizes.values())
        for path, size in sizes.items():
            if path == self.current_path and self.current is not None:
                continue  # the file being written goes when it is rotated
            if total <= self.spec.max_total_bytes and _started(path.name) >= oldest_allowed:
                break
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            total -= size
            lost = self.pending.pop(path, 0)
            if lost:
                self.on_lost(UPLOAD_ERROR, lost)

    def close(self) -> None:
        self.rotate()


class CaptureSink:
    """The bounded queue and its writer thread. `offer` never blocks and never raises."""

    def __init__(self, spec: CaptureSpec, metrics: RouterMetrics, writer: str | None = None,
                 remote: Remote | None = None, clock: Callable[[], float] = time.time) -> None:
        self.spec = spec
        self.metrics = metrics
        self.patterns = compile_patterns(spec.redact, "router.capture.redact")
        self.queue: queue.Queue[CaptureRecord | None] = queue.Queue(maxsize=spec.queue_size)
        writer = writer or _writer_id()
        if parse_uri(spec.uri).scheme == "s3":
            folder = Path(tempfile.gettempdir()) / "kubedistill-capture"
            remote = remote or Remote(spec.uri)
        else:
            folder = local_path(spec.uri)
        self.files = RotatingFiles(folder, spec, writer, remote, clock)
        self.files.on_lost = self._drop
        self._dropped = {reason: metrics.capture_dropped.labels(reason) for reason in
                         (QUEUE_FULL, WRITE_ERROR, UPLOAD_ERROR, CLOSED)}
        self._last_warning = 0.0
        self._closed = False
        self.thread = threading.Thread(target=self._run, name="capture-writer", daemon=True)
        self.thread.start()

    @property
    def description(self) -> str:
        return f"capture to {self.spec.uri}"

    def offer(self, record: CaptureRecord) -> None:
        """Queue a record for the writer; a full queue drops it (counted)."""
        if self._closed:
            self._dropped[CLOSED].inc()
            return
        try:
            self.queue.put_nowait(record)
        except queue.Full:
            self._dropped[QUEUE_FULL].inc()

    def _drop(self, reason: str, count: int = 1) -> None:
        self._dropped[reason].inc(count)

    def _run(self) -> None:
        while True:
            try:
                record = self.queue.get(timeout=1.0)
            except queue.Empty:
                self._guard(self.files.tick)
                continue
            if record is None:
                break
            try:
                self.files.write(self.line(record))
            except Exception as error:
                self._drop(WRITE_ERROR)
                self._warn(error)
            else:
                self.metrics.capture_records.inc()
        self._guard(self.files.close)

    def _guard(self, action: Callable[[], None]) -> None:
        try:
            action()
        except Exception as error:
            self._warn(error)

    def _warn(self, error: BaseException) -> None:
        now = time.monotonic()
        if now - self._last_warning >= WARN_EVERY_SECONDS or not self._last_warning:
            self._last_warning = now
            log.warning("capture: records are being dropped: cannot write to %s (%s: %s)", self.spec.uri,
                        type(error).__name__, error)

    def line(self, record: CaptureRecord) -> bytes:
        """The record as a JSONL line, the user's patterns applied to what the request and the answers hold
        (not to the router's own fields: a version such as `news-v1-20261130121340` is no card number)."""
        if not self.patterns:
            return record.to_line().encode("utf-8")
        value = record.model_dump(mode="json", exclude_none=True)
        for key in CONTENT_FIELDS:
            if key in value:
                value[key] = _redact_value(value[key], self.patterns)
        return (json.dumps(value, ensure_ascii=False) + "\n").encode("utf-8")

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued, close (and upload) the current file; records offered after this are dropped."""
        if self._closed:
            return
        self._closed = True
        try:
            self.queue.put(None, timeout=timeout)  # behind what is queued: the writer drains it first
        except queue.Full:  # the writer is stuck (a hung volume): leave it, it is a daemon thread
            log.warning("capture: the writer did not drain its queue within %g s at shutdown", timeout)
            return
        self.thread.join(timeout)


def _redact_value(value: Any, patterns: list[Any]) -> Any:
    if isinstance(value, str):
        return redact_patterns(value, patterns)
    if isinstance(value, dict):
        return {k: _redact_value(v, patterns) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact_value(v, patterns) for v in value]
    return value


def _writer_id() -> str:
    """The pod's name (its host name) and the process: unique among replicas writing to one volume."""
    host = "".join(c if c.isalnum() or c in "._" else "_" for c in socket.gethostname()) or "router"
    return f"{host}_{os.getpid()}"
