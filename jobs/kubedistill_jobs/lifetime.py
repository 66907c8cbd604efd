"""The embedded Ray dies with `kubedistill run`, however the run ends (SIGKILL and the OOM killer included).

Ray ties its GCS and raylet to the driver (PR_SET_PDEATHSIG) and its workers to the raylet, but not the agents the
raylet starts: with Ray 2.60, `ray::DashboardAgent` and `ray::RuntimeEnvAgent` still ran a minute after their
driver was SIGKILLed, and nothing in a killed process can clean up after it. So before Ray starts, the run starts
a watchdog (`watch_this_process`): a small process of its own that notes, every `INTERVAL` seconds, every
process descended from the run, and once the run is gone (the watchdog's parent changes) kills those still alive.

A process started less than `INTERVAL` before the run died can be missed; Ray's own ties end those it starts
then (workers exit within a second of their raylet). Linux only (/proc); elsewhere nothing is started.

    python -m kubedistill_jobs.lifetime PID    # the watchdog itself (PID: the process it watches)
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

INTERVAL = 0.5  # seconds between looks at the run's processes
PROC = Path("/proc")


def watch_this_process() -> int | None:
    """Start the watchdog of this process; its pid (None where /proc is missing). It stops by itself after this
    process ends, having killed what this process left running; nothing needs to be done with it. Spawned, not a
    `subprocess.Popen`: it outlives this process by design, which Popen would warn about."""
    if not (PROC / str(os.getpid()) / "stat").exists():
        return None
    quiet = [(os.POSIX_SPAWN_OPEN, fd, os.devnull, os.O_RDWR, 0) for fd in (0, 1, 2)]
    return os.posix_spawn(sys.executable, [sys.executable, "-m", "kubedistill_jobs.lifetime", str(os.getpid())],
                          os.environ, file_actions=quiet)


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, start time in clock ticks since boot) of a live process; None when it is gone."""
    try:
        text = (PROC / str(pid) / "stat").read_text()
    except (OSError, ValueError):
        return None
    fields = text[text.rindex(")") + 2:].split()  # after the command name, which may hold spaces and ')'
    return int(fields[1]), int(fields[19])


def processes() -> dict[int, tuple[int, int]]:
    """Every live process: pid → (parent pid, start time)."""
    found = {}
    for entry in PROC.iterdir():
        if entry.name.isdigit() and (stat := _stat(int(entry.name))) is not None:
            found[int(entry.name)] = stat
    return found


def descendants(root: int, table: dict[int, tuple[int, int]]) -> dict[int, int]:
    """The processes below `root` in `table`: pid → start time (a pid alone may be reused by then)."""
    children: dict[int, list[int]] = {}
    for pid, (parent, _) in table.items():
        children.setdefault(parent, []).append(pid)
    found: dict[int, int] = {}
    pending = list(children.get(root, []))
    while pending:
        pid = pending.pop()
        if pid not in found:
            found[pid] = table[pid][1]
            pending.extend(children.get(pid, []))
    return found


def kill_left_over(seen: dict[int, int]) -> list[int]:
    """SIGKILL the processes of `seen` (pid → start time) still running, and what they started since; the pids
    killed."""
    table = processes()
    targets = {pid: start for pid, start in seen.items() if table.get(pid, (0, -1))[1] == start}
    for pid in list(targets):
        targets.update(descendants(pid, table))
    killed = []
    for pid in targets:
        if pid == os.getpid():
            continue
        try:
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
        except (ProcessLookupError, PermissionError):
            pass
    return killed


def watch(parent: int, interval: float = INTERVAL, gone: Callable[[], bool] | None = None) -> list[int]:
    """Note `parent`'s descendants until it is gone (`gone()`; by default: this process has another parent now),
    then kill those left over; the pids killed."""
    gone = gone or (lambda: os.getppid() != parent)
    seen: dict[int, int] = {}
    while True:
        seen.update(descendants(parent, processes()))
        if gone():
            break
        time.sleep(interval)
    seen.pop(os.getpid(), None)
    return kill_left_over(seen)


def main(parent: int) -> None:
    # A terminal's Ctrl-C, a hang-up or a stop of the whole process group reach the watchdog too: it stays to
    # clean up after the run, which ends on them.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    watch(parent)


if __name__ == "__main__":
    main(int(sys.argv[1]))
