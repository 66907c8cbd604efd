"""The pipeline: the stages of `kubedistill_jobs.stages`, in order, with markers and resume.

Each finished stage leaves a marker (`layout.stage_marker`); a rerun with the same output skips finished
stages and training resumes from its last checkpoint. The same code runs as the RayJob entrypoint and
under `kubedistill run`; they differ only in how progress is shown (`Display`) and reported (`reporting`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import yaml

from kubedistill.api.distillationjob import DistillationJob, DistillationJobSpec
from kubedistill.artifacts import STAGES, OutputLayout, ServingManifest, Stage
from kubedistill.errors import InputError
from kubedistill_jobs import preflight, stages
from kubedistill_jobs.context import Context, Progress
from kubedistill_jobs.storage import Output

log = logging.getLogger("kubedistill.pipeline")


class Display(Protocol):
    """How a run shows itself: a progress bar per stage (CLI) or log lines and status patches (cluster)."""

    def stage_started(self, stage: str) -> Progress: ...

    def stage_finished(self, stage: str, summary: str, skipped: bool) -> None: ...

    def stage_failed(self, stage: str, error: BaseException) -> None: ...

    def epoch(self, entry: dict[str, Any]) -> None: ...

    def message(self, text: str) -> None: ...


class SpecChangedError(InputError):
    """The output folder holds a run of a different spec: resuming it would mix two jobs."""


@dataclass
class RunResult:
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)  # stage → its marker
    report: Any = None  # kubedistill.report.Report, once evaluation ran
    manifest: ServingManifest | None = None  # once export ran


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def percent(stage: str, fraction: float) -> float:
    """The run's overall progress when `stage` is `fraction` done, weighting stages by their WEIGHT."""
    weights = [stages.MODULES[s].WEIGHT for s in STAGES]
    done = sum(weights[: STAGES.index(stage)])  # type: ignore[arg-type]
    return round(100 * (done + fraction * stages.MODULES[stage].WEIGHT) / sum(weights), 1)


class Pipeline:
    def __init__(self, job: DistillationJob, output: Output, *, workers: int | None = None,
                 display: Display, on_status: Callable[..., None] | None = None) -> None:
        self.context = Context(job=job, output=output, workers=workers or job.spec.ray.workers.replicas,
                               display=display, on_status=on_status or (lambda **_: None))
        self._shown: set[str] = set()
        self._prepared = False

    @property
    def layout(self) -> OutputLayout:
        return self.context.layout

    def _check_resolved_spec(self) -> None:
        """Refuse a folder that holds a run of another spec, except where the change leaves what was made valid:
        `output` (where the run lives: a copied or moved folder) changes nothing, and `evaluation` is read by
        the evaluation alone, so a change there reruns evaluate and export and keeps the trained students."""
        job, layout = self.context.job, self.layout
        wire = job.spec.to_wire()
        wire.pop("ray", None)  # workers and resources may change between attempts
        path = layout.resolved_spec
        produced = any(layout.stage_marker(stage).is_file() for stage in STAGES)
        if path.is_file() and produced:  # a run refused before its first stage made nothing to keep
            previous = (yaml.safe_load(path.read_text()) or {}).get("spec", {})
            with contextlib.suppress(ValueError):  # read as this version does: fields added since take defaults
                previous = DistillationJobSpec.model_validate(previous).to_wire()
            previous.pop("ray", None)
            changed = _differences(previous, wire, limit=None) if previous != wire else []
            content = [d for d in changed if not d.startswith(("spec.output", "spec.evaluation"))]
            if previous != wire and (content or not changed):
                shown = ", ".join(content[:8]) or "its layout"
                raise SpecChangedError(
                    f"output.uri: {self.context.output.uri} holds a run of a different spec (it differs in {shown}); "
                    "use another output (--output) or delete the folder to start over (a change to evaluation "
                    "alone reruns the evaluation and keeps the rest)"
                )
            reevaluate = [d for d in changed if d.startswith("spec.evaluation")]
            if reevaluate:
                rerun = STAGES[STAGES.index("evaluate"):]
                for stage in rerun:
                    layout.stage_marker(stage).unlink(missing_ok=True)
                self.context.display.message(
                    f"{', '.join(reevaluate[:8])} changed since the last run: {' and '.join(rerun)} run again; "
                    "the earlier stages' results are kept")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(job.to_wire(), sort_keys=False))

    def _finish(self, stage: Stage, info: dict[str, Any], seconds: float) -> dict[str, Any]:
        marker = {"stage": stage, "finished_at": _now(), "seconds": round(seconds, 2), **info}
        path = self.layout.stage_marker(stage)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(marker, indent=2, default=str) + "\n")
        log.info("stage %s finished in %.1f s: %s", stage, seconds,
                 {k: v for k, v in info.items() if k != "history"})
        self.context.output.push()
        return marker

    def _progress(self, stage: str) -> Progress:
        show = self.context.display.stage_started(stage)
        on_status = self.context.on_status
        started = time.monotonic()

        def progress(done: int, total: int) -> None:
            show(done, total)
            fraction = done / total if total else 0.0
            elapsed = time.monotonic() - started
            eta = int(elapsed / fraction - elapsed) if fraction > 0 else None
            extra = {"step": done, "total_steps": total} if stage == "train" else {}
            on_status(progress={"stage": stage, "percent": percent(stage, fraction),
                                "estimated_remaining_seconds": eta, **extra})

        return progress

    def prepare(self) -> None:
        """Everything that needs no Ray: fetch the output, refuse a changed spec, preflight checks."""
        if self._prepared:
            return
        context = self.context
        context.output.pull()
        self._check_resolved_spec()
        preflight.check_spec(context.spec, context.workers)
        context.found = preflight.check_models(context.spec, self.layout)
        self._prepared = True

    def run(self, *, stop_after: Stage | None = None) -> RunResult:
        """Run the stages not finished yet, in order (through `stop_after`); skip the finished ones."""
        self.prepare()
        context, display = self.context, self.context.display
        result = RunResult()
        for stage in STAGES:
            module = stages.MODULES[stage]
            marker = context.marker(stage)
            if marker is not None and stage in self._shown:  # finished by an earlier run() of this process
                pass
            elif marker is not None:
                log.info("stage %s: done earlier, skipped", stage)
                display.stage_started(stage)(1, 1)
                display.stage_finished(stage, module.summary(marker), True)
            else:
                context.on_status(progress={"stage": stage, "percent": percent(stage, 0.0)})
                started = time.monotonic()
                try:
                    info = module.run(context, self._progress(stage))
                except BaseException as error:
                    display.stage_failed(stage, error)  # its progress lines stop; the error goes on up
                    raise
                marker = self._finish(stage, info, time.monotonic() - started)
                display.stage_finished(stage, module.summary(marker), False)
            result.stages[stage] = marker
            self._shown.add(stage)
            if stage == stop_after:
                break
        if "evaluate" in result.stages:
            result.report = context.report
        if "export" in result.stages and self.layout.serving_manifest.is_file():
            result.manifest = ServingManifest.read(self.layout.model_repository)
        return result


def _differences(old: Any, new: Any, path: str = "spec", limit: int | None = 8) -> list[str]:
    """The dotted fields where two wire specs differ (a field only one has counts too), at most `limit`."""
    if isinstance(old, dict) and isinstance(new, dict):
        found = [d for key in sorted(set(old) | set(new), key=str)
                 for d in _differences(old.get(key), new.get(key), f"{path}.{key}", None)]
        return found[:limit]
    return [] if old == new else [path]
