"""Prune (when asked, with recovery steps), export the student and the teacher to ONNX with an equivalence
check, and quantize the student: `onnx/` and its `compression.json`."""

from __future__ import annotations

from typing import Any

from kubedistill.artifacts import Stage
from kubedistill_jobs.context import Context, Progress

NAME: Stage = "compress"
WEIGHT = 8
UNIT = "step"
READS = ("data", "teacher", "student")
WRITES = ("onnx",)


def run(context: Context, progress: Progress) -> dict[str, Any]:
    from kubedistill_jobs import compress

    compress.compress(context.spec, context.layout, progress=progress)
    return {"summary": "done"}


def summary(marker: dict[str, Any]) -> str:
    return str(marker.get("summary", ""))
