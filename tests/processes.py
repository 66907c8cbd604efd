"""Helpers for tests that drive real processes (`kubedistill serve`, the router): run them, read their output
until a marker, post JSON to them and stop them. Loaded by tests/conftest.py as module `kubedistill_processes`."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator


@contextlib.contextmanager
def running(command: list[str]) -> Iterator[subprocess.Popen]:
    """`command` with its output (stdout and stderr, as text) piped, for the block; killed afterwards if it still
    runs, so a failed assertion never leaves a server behind."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def terminate(process: subprocess.Popen, timeout: float) -> int:
    """SIGTERM (what Ctrl-C's handler and Kubernetes send), then the exit code."""
    process.send_signal(signal.SIGTERM)
    return process.wait(timeout)


def read_until(process: subprocess.Popen, marker: str, timeout: float) -> str:
    """stdout until a line holds `marker`; fails when the process ends or the deadline passes first."""
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(process.stdout.readline, "")), daemon=True)
    reader.start()
    deadline = time.monotonic() + timeout
    while not any(marker in line for line in lines):
        if time.monotonic() > deadline or (process.poll() is not None and not reader.is_alive()):
            process.kill()
            raise AssertionError(f"no {marker!r} in the output:\n{''.join(lines)}")
        time.sleep(0.1)
    return "".join(lines)


def post(url: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())
