"""How a run shows progress: bars in a terminal, and elsewhere (a redirected file, CI, a pod's log) a line per
running stage at a steady interval, with percent, rate and ETA."""

from __future__ import annotations

import io
import subprocess
import sys
import threading
import time

import pytest
from kubedistill_jobs.display import RichDisplay, StageLines


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_line_gives_percent_rate_and_eta_from_the_steps_after_start_up():
    clock, emitted = Clock(), []
    lines = StageLines(emitted.append, every=0, clock=clock)  # every=0: no thread, ticks by hand
    lines.start("teacher", "rows")
    lines.start("train", "steps")
    lines.tick()
    assert emitted == ["teacher: starting (elapsed 0:00:00)", "train: starting workers (elapsed 0:00:00)"]
    clock.now += 30  # 30 s of start-up before the first rows, left out of the rate
    lines.update("teacher", 0, 2000)
    lines.update("teacher", 200, 2000)
    clock.now += 10
    lines.update("teacher", 600, 2000)  # 400 rows in 10 s: 40 rows/s, 1400 left
    lines.finish("train")
    emitted.clear()
    lines.tick()
    assert emitted == ["teacher: 600/2000 rows (30%), 40.0 rows/s, eta 0:00:35 (elapsed 0:00:40)"]
    lines.start("evaluate", "step")
    lines.update("evaluate", 1, 4)
    clock.now += 90
    lines.update("evaluate", 2, 4)
    lines.finish("teacher")
    emitted.clear()
    lines.tick()
    assert emitted == ["evaluate: 2/4 step (50%), eta 0:03:00 (elapsed 0:01:30)"]  # coarse steps: no rate


def wait_until(condition, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_outside_a_terminal_a_stage_that_reports_nothing_still_prints_at_a_steady_interval():
    out = io.StringIO()
    from rich.console import Console

    display = RichDisplay(Console(file=out, force_terminal=False, width=40), lines_every=0.05)
    with display:
        update = display.stage_started("evaluate")
        update(1, 4)
        assert wait_until(lambda: out.getvalue().count("evaluate: 1/4 step (25%)") >= 2)
        display.stage_finished("evaluate", "retention 0.97, gate passed, and a summary longer than a line", False)
        display.stage_started("export")
        assert wait_until(lambda: out.getvalue().count("export: starting") >= 2)
    after = out.getvalue().split("✓ evaluate: retention 0.97, gate passed, and a summary longer than a line\n")[1]
    assert "evaluate" not in after  # a finished stage prints nothing more
    assert "━" not in out.getvalue()  # no bars in a file


def test_in_a_terminal_the_train_bar_says_it_is_starting_workers_until_the_first_step():
    from rich.console import Console

    out = io.StringIO()
    display = RichDisplay(Console(file=out, force_terminal=True, width=120))
    update = display.stage_started("train")
    table = display.progress.make_tasks_table(display.progress.tasks)
    render = Console(file=io.StringIO(), width=120, record=True)
    render.print(table)
    assert "starting workers" in render.export_text() and "0/?" not in render.export_text()
    update(5, 318)
    render.print(display.progress.make_tasks_table(display.progress.tasks))
    assert "5/318" in render.export_text()


@pytest.mark.slow
def test_the_teacher_pass_on_one_node_prints_no_ray_advisory_to_the_terminal(tmp_path):
    # A fresh process: Ray prints its advisory about actor constructor arguments once per process.
    script = """
import ray
from kubedistill_jobs.teacher_outputs import map_rows

class Double:
    def __init__(self, factor):
        self.factor = factor
    def __call__(self, batch):
        return {"idx": batch["idx"], "y": batch["x"] * self.factor}

ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
out = map_rows(Double, {"factor": 2}, {"x": list(range(64))}, batch_size=16, actors=2, resources={"num_cpus": 1})
assert list(out["y"]) == [2 * i for i in range(64)], out
print("mapped")
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path)
    assert done.returncode == 0 and "mapped" in done.stdout, done.stderr
    assert "constructor arguments" not in done.stderr, done.stderr
    assert "RayDeprecationWarning" not in done.stderr, done.stderr  # nor Ray's warning about max_restarts instead


def test_lines_stop_with_the_display():
    seen = threading.Event()
    lines = StageLines(lambda text: seen.set(), every=0.02)
    lines.start("data", "step")
    assert seen.wait(30)
    lines.close()
    lines._thread.join(30)
    assert not lines._thread.is_alive()


def test_a_stage_that_fails_prints_no_more_lines():
    out = io.StringIO()
    from rich.console import Console

    display = RichDisplay(Console(file=out, force_terminal=False, width=80), lines_every=0.02)
    with display:
        display.stage_started("teacher")
        assert wait_until(lambda: "teacher: starting" in out.getvalue())
        display.stage_failed("teacher", RuntimeError("teacher unreachable"))
        failed_at = out.getvalue().index("✗ teacher: RuntimeError")
        display.stage_started("data")  # a stage still running: proof the thread ticks on
        assert wait_until(lambda: out.getvalue().count("data: starting") >= 2)
    assert "teacher:" not in out.getvalue()[failed_at + len("✗ teacher: RuntimeError"):]
