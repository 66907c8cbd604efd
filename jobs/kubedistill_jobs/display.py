"""How a run shows its progress: rich progress bars in a terminal, lines at a steady interval elsewhere (a
redirected file, CI) and log lines in a cluster pod."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from kubedistill_jobs import stages


class RichDisplay:
    """One progress bar per stage with its rate and ETA; epoch metrics printed above the bars. Where the console
    is not a terminal, `StageLines` instead."""

    def __init__(self, console: Any = None, lines_every: float = 10.0) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.console = console or Console(stderr=True)
        if console is None and not self.console.is_terminal:  # a log file or CI: no 80-column wrap of tables
            self.console.width = max(self.console.width, 160)
        self.progress = Progress(
            TextColumn("[bold]{task.description:<12}"),
            BarColumn(bar_width=24),
            TextColumn("{task.fields[count]}"),  # done/total, or what a stage waits for before its first step
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
        )
        self.tasks: dict[str, Any] = {}
        self.started: dict[str, float] = {}
        # Live bars show nothing until the end where the output is not a terminal (CI, a redirected file):
        # there, a line per running stage at a steady interval instead.
        self.lines = None if self.console.is_terminal else StageLines(self._print_line, every=lines_every)

    def _print_line(self, text: str) -> None:
        self.console.print(text, markup=False, highlight=False, soft_wrap=True)

    def __enter__(self) -> RichDisplay:
        if self.lines is None:
            self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.lines is None:
            self.progress.stop()
        else:
            self.lines.close()

    def stage_started(self, stage: str) -> Callable[[int, int], None]:
        unit = stages.unit(stage)
        if self.lines is not None:
            self.lines.start(stage, unit)
            return lambda done, total: self.lines.update(stage, done, total)  # type: ignore[union-attr]
        if stage not in self.tasks:
            self.tasks[stage] = self.progress.add_task(stage, total=None, rate="",
                                                       count=StageLines.WAITING.get(stage, ""))
            self.started[stage] = time.monotonic()
        task = self.tasks[stage]

        def update(done: int, total: int) -> None:
            elapsed = max(1e-9, time.monotonic() - self.started[stage])
            rate = f"{done / elapsed:.1f} {unit}/s" if done and elapsed > 1 and unit != "step" else ""
            self.progress.update(task, completed=done, total=total or None, rate=rate,
                                 count=f"{done}/{total}" if total else StageLines.WAITING.get(stage, ""))

        return update

    def stage_finished(self, stage: str, summary: str, skipped: bool) -> None:
        if self.lines is not None:
            self.lines.finish(stage)
        task = self.tasks.get(stage)
        if task is not None:
            current = self.progress.tasks[[t.id for t in self.progress.tasks].index(task)]
            total = current.total or 1
            self.progress.update(task, completed=total, total=total, count=f"{total:g}/{total:g}")
        mark = "[dim]✓ {stage} (done earlier): {summary}" if skipped else "[green]✓[/green] {stage}: {summary}"
        self.progress.console.print(mark.format(stage=stage, summary=summary), soft_wrap=self.lines is not None)

    def stage_failed(self, stage: str, error: BaseException) -> None:
        if self.lines is not None:
            self.lines.finish(stage)
        self.progress.console.print(f"[red]✗[/red] {stage}: {type(error).__name__}",
                                    soft_wrap=self.lines is not None)

    def epoch(self, entry: dict[str, Any]) -> None:
        shown = {k: v for k, v in entry.items() if k not in ("step", "seconds")}
        parts = [f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in shown.items()]
        self.progress.console.print("  " + ", ".join(parts), soft_wrap=self.lines is not None)

    def message(self, text: str) -> None:
        self.progress.console.print(text, soft_wrap=self.lines is not None)


class LogDisplay:
    """Progress as log lines (one per running stage every `every` seconds), for pods and CI logs."""

    def __init__(self, logger: logging.Logger, every: float = 15.0) -> None:
        self.log = logger
        self.every = every
        self.lines = StageLines(lambda text: self.log.info("%s", text), every=every)

    def stage_started(self, stage: str) -> Callable[[int, int], None]:
        self.log.info("stage %s started", stage)
        self.lines.start(stage, stages.unit(stage))
        return lambda done, total: self.lines.update(stage, done, total)

    def stage_finished(self, stage: str, summary: str, skipped: bool) -> None:
        self.lines.finish(stage)
        self.log.info("stage %s %s: %s", stage, "done earlier" if skipped else "done", summary)

    def stage_failed(self, stage: str, error: BaseException) -> None:
        self.lines.finish(stage)
        self.log.info("stage %s failed: %s", stage, type(error).__name__)

    def epoch(self, entry: dict[str, Any]) -> None:
        pass  # the pipeline logs every epoch itself

    def message(self, text: str) -> None:
        self.log.info("%s", text)


@dataclass
class _Running:
    unit: str
    started: float
    done: int = 0
    total: int = 0
    first: tuple[float, int] | None = None  # (time, done) at the first step: the rate leaves start-up out


class StageLines:
    """A line per running stage every `every` seconds, from a background thread, so that a stage that reports
    rarely (or not yet) still shows it is alive: `teacher: 812/2127 rows (38%), 31.2 rows/s, eta 0:00:42`.

    `emit` prints one line; `clock` is injectable for tests. Thread-safe: the pipeline updates, the thread prints.
    """

    WAITING: ClassVar[dict[str, str]] = {"train": "starting workers"}  # what a stage does before its first step

    def __init__(self, emit: Callable[[str], None], every: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.emit, self.every, self.clock = emit, every, clock
        self.running: dict[str, _Running] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, stage: str, unit: str) -> None:
        with self._lock:
            self.running.setdefault(stage, _Running(unit, self.clock()))
            if self._thread is None and self.every > 0:
                self._thread = threading.Thread(target=self._run, name="progress-lines", daemon=True)
                self._thread.start()

    def update(self, stage: str, done: int, total: int) -> None:
        with self._lock:
            state = self.running.get(stage)
            if state is None:
                return
            if state.first is None and done > 0:
                state.first = (self.clock(), done)
            state.done, state.total = done, total

    def finish(self, stage: str) -> None:
        with self._lock:
            self.running.pop(stage, None)

    def close(self) -> None:
        self._stop.set()

    def tick(self) -> None:
        """Print the line of every running stage (the thread calls this every `every` seconds)."""
        with self._lock:
            lines = [self.line(stage, state) for stage, state in self.running.items()]
        for text in lines:
            self.emit(text)

    def line(self, stage: str, state: _Running) -> str:
        now = self.clock()
        elapsed = f"elapsed {_clock(now - state.started)}"
        if not state.total:
            return f"{stage}: {self.WAITING.get(stage, 'starting')} ({elapsed})"
        unit = f" {state.unit}" if state.unit else ""
        parts = [f"{stage}: {state.done}/{state.total}{unit} ({state.done / state.total:.0%})"]
        if state.first is not None and now > state.first[0] and state.done > state.first[1]:
            rate = (state.done - state.first[1]) / (now - state.first[0])
            if state.unit != "step":
                parts.append(f"{rate:.1f}{unit}/s")
            parts.append(f"eta {_clock((state.total - state.done) / rate)}")
        return ", ".join(parts) + f" ({elapsed})"

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.tick()


def _clock(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
