"""The router as a process of its own, as the sidecar runs, for the benchmarks that drive it."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path


def start_router(config: Path, log: Path, port: int, timeout: float = 60.0) -> subprocess.Popen[bytes]:
    """`python -m kubedistill_router --config <config>`, logging to `log`, once its /readyz answers 200.
    Raises RuntimeError with the log's tail when it exits or is not ready within `timeout` seconds."""
    with open(log, "wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "kubedistill_router", "--config", str(config),
                                    "--host", "127.0.0.1", "--log-level", "WARNING"],
                                   stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    while not ready(f"http://127.0.0.1:{port}"):
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"router did not start:\n{log.read_text()[-2000:]}")
        time.sleep(0.1)
    return process


def ready(base: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base}/readyz", timeout=1) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False
