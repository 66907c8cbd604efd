"""`report.json`: the gap evaluation's keys, written by the pipeline and read by the operator and CLI."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from kubedistill.api.distillationjob import JobResults


class _Open(BaseModel):
    """Known keys are typed; extra keys (more metrics, batch-32 latencies, ...) are kept."""

    model_config = ConfigDict(extra="allow")


class Latency(_Open):
    p50: float = Field(description="Median latency at batch 1, milliseconds.")
    p95: float = Field(description="95th percentile at batch 1, milliseconds.")


class ModelReport(_Open):
    """One model's cost and quality. A remote endpoint teacher has no graph here: its params, size and
    latency are null, and its metrics hold only what the endpoint could score (perplexity, or nothing)."""

    params: int | None
    size_bytes: int | None
    metrics: dict[str, float] = Field(description="accuracy and macro_f1 (classification) or perplexity.")
    latency_ms: Latency | None
    latency_ms_batch32: Latency | None = Field(default=None, description="p50/p95 at batch 32, milliseconds.")
    throughput: dict[str, float] | None = Field(default=None, description="Items/s by batch (batch1, batch32).")


class FrontierPoint(_Open):
    threshold: float
    escalation_rate: float
    accuracy: float


class Routing(_Open):
    signal: str = "max-probability"
    frontier: list[FrontierPoint]
    recommended_threshold: float | None
    target: float
    recommended: FrontierPoint | None = Field(default=None, description="The point at that threshold.")
    teacher_accuracy: float | None = Field(default=None, description="The teacher's accuracy the target is a share of.")


class Gate(_Open):
    min_retention: float | None
    passed: bool
    shortfall: float = Field(default=0.0, description="How far retention fell below min_retention (0 when passed).")


class Report(_Open):
    task: Literal["sequence-classification", "causal-lm"]
    teacher: ModelReport
    student: ModelReport
    student_quantized: ModelReport
    retention: float | None = Field(description="Null when the teacher's quality is unknown (an endpoint "
                                                "that does not score prompts).")
    agreement: float | None
    speedup: float | None = Field(description="Null without a teacher graph to time (an endpoint teacher).")
    compression: float | None = Field(description="Null without a teacher graph to size (an endpoint teacher).")
    routing: Routing | None
    gate: Gate
    model_version: str | None = None
    labelled: bool | None = Field(default=None, description="False: no gold labels (agreement only).")

    @property
    def primary_metric(self) -> str:
        return "perplexity" if self.task == "causal-lm" else "accuracy"

    def shortfall(self) -> float:
        """How far retention is below the gate (0 when it passed or there is no gate)."""
        if self.gate.min_retention is None:
            return 0.0
        return max(0.0, self.gate.min_retention - (self.retention or 0.0))


def job_results(report: Report, artifact_uri: str, report_uri: str) -> JobResults:
    """The headline numbers a DistillationJob's status carries."""
    routing = report.routing
    point = None
    if routing and routing.recommended_threshold is not None:
        point = min(routing.frontier, key=lambda p: abs(p.threshold - routing.recommended_threshold))  # type: ignore[operator]
    metric = report.primary_metric
    return JobResults(
        retention=None if report.retention is None else round(report.retention, 4),
        agreement=None if report.agreement is None else round(report.agreement, 4),
        speedup=None if report.speedup is None else round(report.speedup, 2),
        compression=None if report.compression is None else round(report.compression, 2),
        teacher_metric=report.teacher.metrics.get(metric),
        student_metric=report.student_quantized.metrics.get(metric),
        recommended_threshold=routing.recommended_threshold if routing else None,
        escalation_rate=None if point is None else round(point.escalation_rate, 4),
        gate_passed=report.gate.passed,
        artifact_uri=artifact_uri,
        report_uri=report_uri,
        model_version=report.model_version,
    )


def load_report(text: str) -> Report:
    return Report.model_validate_json(text)


def report_dict(report: Report) -> dict[str, Any]:
    return report.model_dump(mode="json")
