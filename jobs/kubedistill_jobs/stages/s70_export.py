"""Write the Triton model repository (the served student, the teacher for colocated escalation, tokenizers,
`serving.json` with the report's threshold)."""

from __future__ import annotations

from typing import Any

from kubedistill.artifacts import Stage
from kubedistill_jobs.context import Context, Progress

NAME: Stage = "export"
WEIGHT = 5
UNIT = "step"
READS = ("teacher", "student", "onnx", "report_json")
WRITES = ("model_repository",)


def run(context: Context, progress: Progress) -> dict[str, Any]:
    from kubedistill_jobs import export

    report = context.report
    if report is None:
        raise FileNotFoundError(f"{context.layout.report_json} is missing: run the evaluate stage first")
    manifest = export.export(context.spec, context.layout, report)
    progress(1, 1)
    return {"model_version": manifest.model_version, "summary": str(context.layout.model_repository)}


def summary(marker: dict[str, Any]) -> str:
    return str(marker.get("summary", ""))
