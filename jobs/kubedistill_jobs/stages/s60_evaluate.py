"""Evaluate the quantized student against the teacher on held-out data (quality, cost, the routing
frontier) and apply the gate: `report.json`, `report.md`, `plots/`."""

from __future__ import annotations

from typing import Any

from kubedistill.artifacts import Stage
from kubedistill_jobs.context import Context, Progress

NAME: Stage = "evaluate"
WEIGHT = 10
UNIT = "step"
READS = ("data", "teacher", "student", "onnx", "train_report")
WRITES = ("report_json", "report_md", "plots")


def run(context: Context, progress: Progress) -> dict[str, Any]:
    from kubedistill_jobs import evaluate

    report = evaluate.evaluate(context.spec, context.layout, context.model_version, progress=progress)
    context.report = report
    retention = "unknown" if report.retention is None else f"{report.retention:.4f}"
    verdict = "no gate (evaluation.gate.minRetention unset)" if report.gate.min_retention is None else \
        f"gate {'passed' if report.gate.passed else 'NOT met'}"
    return {"retention": report.retention, "gate_passed": report.gate.passed,
            "summary": f"retention {retention}, {verdict}"}


def summary(marker: dict[str, Any]) -> str:
    return str(marker.get("summary", ""))
