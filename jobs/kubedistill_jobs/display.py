"""How a run shows its progress: rich progress bars in a terminal, log lines in a cluster pod."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from kubedistill_jobs import stages


class RichDisplay:
    """One progress bar per stage with its rate and ETA; epoch metrics printed above the bars."""

    def __init__(self, console: Any = None) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.console = console or Console(stderr=True)
        self.progress = Progress(
            TextColumn("[bold]{task.description:<12}"),
            BarColumn(bar_width=24),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
        )
        self.tasks: dict[str, Any] = {}
        self.started: dict[str, float] = {}

    def __enter__(self) -> RichDisplay:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def stage_started(self, stage: str) -> Callable[[int, int], None]:
        if stage not in self.tasks:
            self.tasks[stage] = self.progress.add_task(stage, total=None, rate="")
            self.started[stage] = time.monotonic()
        task = self.tasks[stage]
        unit = stages.unit(stage)

        def update(done: int, total: int) -> None:
            elapsed = max(1e-9, time.monotonic() - self.started[stage])
            rate = f"{done / elapsed:.1f} {unit}/s" if done and elapsed > 1 and unit != "step" else ""
            self.progress.update(task, completed=done, total=total or None, rate=rate)

        return update

    def stage_finished(self, stage: str, summary: str, skipped: bool) -> None:
        task = self.tasks.get(stage)
        if task is not None:
            current = self.progress.tasks[[t.id for t in self.progress.tasks].index(task)]
            total = current.total or 1
            self.progress.update(task, completed=total, total=total)
        mark = "[dim]✓ {stage} (done earlier): {summary}" if skipped else "[green]✓[/green] {stage}: {summary}"
        self.progress.console.print(mark.format(stage=stage, summary=summary))

    def epoch(self, entry: dict[str, Any]) -> None:
        shown = {k: v for k, v in entry.items() if k not in ("step", "seconds")}
        parts = [f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in shown.items()]
        self.progress.console.print("  " + ", ".join(parts))

    def message(self, text: str) -> None:
        self.progress.console.print(text)


class LogDisplay:
    """Progress as log lines (at most one every `every` seconds per stage), for pods and CI logs."""

    def __init__(self, logger: logging.Logger, every: float = 15.0) -> None:
        self.log = logger
        self.every = every

    def stage_started(self, stage: str) -> Callable[[int, int], None]:
        self.log.info("stage %s started", stage)
        last = [0.0]

        def update(done: int, total: int) -> None:
            now = time.monotonic()
            if now - last[0] >= self.every or done == total:
                last[0] = now
                self.log.info("stage %s: %d/%d", stage, done, total)

        return update

    def stage_finished(self, stage: str, summary: str, skipped: bool) -> None:
        self.log.info("stage %s %s: %s", stage, "done earlier" if skipped else "done", summary)

    def epoch(self, entry: dict[str, Any]) -> None:
        pass  # the pipeline logs every epoch itself

    def message(self, text: str) -> None:
        self.log.info("%s", text)
