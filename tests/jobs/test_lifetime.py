"""The embedded Ray ends with `kubedistill run` however the run ends: real processes, SIGKILLed."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time

import psutil
import pytest
from kubedistill_jobs import lifetime

# A process that leaves a child behind when it dies, as Ray's raylet leaves its agents: the child is in a session
# of its own (a kill of the group misses it) and nothing ties it to its parent.
LEAVES_A_CHILD = textwrap.dedent("""
    import subprocess, sys, time
    child = subprocess.Popen(["sleep", "300"], start_new_session=True)
    print(child.pid, flush=True)
    time.sleep(300)
""")


def _gone(pids: list[int], timeout: float) -> list[int]:
    """The pids of `pids` still running after `timeout` seconds (zombies count as gone)."""
    deadline = time.monotonic() + timeout
    alive = list(pids)
    while alive and time.monotonic() < deadline:
        alive = [pid for pid in alive if psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie"]
        time.sleep(0.1)
    return alive


def test_the_watchdog_kills_what_a_killed_process_left_running():
    run = subprocess.Popen([sys.executable, "-c", LEAVES_A_CHILD], stdout=subprocess.PIPE)
    assert run.stdout is not None
    child = int(run.stdout.readline())
    unrelated = subprocess.Popen(["sleep", "300"])  # started by this test, not by the run: left alone
    try:

        def killed_now() -> bool:  # the first look at the run's processes is taken: SIGKILL it
            run.send_signal(signal.SIGKILL)
            run.wait()
            return True

        killed = lifetime.watch(run.pid, gone=killed_now)
        assert killed == [child]
        assert _gone([child], 10) == []
        assert unrelated.poll() is None
    finally:
        unrelated.kill()
        unrelated.wait()
        run.stdout.close()
        run.kill()
        run.wait()
        if psutil.pid_exists(child):
            psutil.Process(child).kill()


def test_a_start_time_tells_a_reused_pid_apart():
    other = subprocess.Popen(["sleep", "300"])
    try:
        table = lifetime.processes()
        assert table[other.pid][0] == psutil.Process().pid
        # Noted with another start time, the pid is another process now: never killed.
        assert lifetime.kill_left_over({other.pid: table[other.pid][1] + 1}) == []
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()


RUN_WITH_RAY = textwrap.dedent("""
    import os, time
    from kubedistill_jobs.runner import start_local_ray
    import ray
    start_local_ray(1)
    print(ray.get(ray.remote(lambda: os.getpid()).remote()), flush=True)
    time.sleep(600)
""")


@pytest.mark.slow
def test_ray_ends_with_a_sigkilled_run():
    """`start_local_ray` as `kubedistill run` calls it, then only the run's own process SIGKILLed (as the OOM
    killer or `kill -9 <pid>` do): every process Ray started ends, the agents that outlive their raylet too."""
    run = subprocess.Popen([sys.executable, "-c", RUN_WITH_RAY], stdout=subprocess.PIPE, start_new_session=True)
    assert run.stdout is not None
    tree: list[psutil.Process] = []
    try:
        worker = int(run.stdout.readline() or 0)
        assert worker, f"Ray did not start (exit {run.poll()})"
        tree = psutil.Process(run.pid).children(recursive=True)
        titles = {p.pid: " ".join(p.cmdline())[:80] for p in tree}
        assert worker in titles and any("raylet" in t for t in titles.values()), titles
        run.send_signal(signal.SIGKILL)
        run.wait()
        left = _gone([p.pid for p in tree], 30)
        assert left == [], [titles[pid] for pid in left]
    finally:
        run.stdout.close()
        run.kill()
        run.wait()
        for process in tree:  # whatever a failed check left running
            if process.is_running():
                process.kill()
