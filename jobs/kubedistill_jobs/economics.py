"""What a student saves: cost per 1M requests of teacher-only, student-only and the cascade, the cost ratio, the
monthly saving and the job's payback, from `evaluation.economics` (prices, traffic) and what the job measured
(throughput of teacher and quantized student on the same machine, tokens on the eval split, the routing
frontier's escalation, the job's duration). Pure: no I/O, every number comes from the arguments.

A model priced per hour costs price / (3600 × throughput × utilization) per item it serves; an API teacher
costs its tokens. The cascade runs the student on every request and the teacher on the share escalated.
"""

from __future__ import annotations

from dataclasses import dataclass

from kubedistill.api.distillationjob import EconomicsSpec
from kubedistill.report import CostFigure, CostPoint, Economics, Report, Routing

DAYS_PER_MONTH = 365.25 / 12  # the calendar's mean month
MILLION = 1_000_000


@dataclass(frozen=True)
class Measured:
    """What the job measured that the prices apply to.

    input_tokens_per_request: mean tokens of an eval text as the models see it (truncated at task.maxLength);
    tokens_per_item: for a causal LM, the mean tokens of one timed forward pass (throughput is items/s), so that
    throughput converts to tokens/s; None for classification (one request is one item). job_seconds: the
    stages' measured durations up to the end of the evaluation. teacher_input_tokens_per_request: the same
    texts in the teacher's own tokens (an endpoint's count, or the teacher's tokenizer), which a per-token price
    applies to; None when only the student's count is known."""

    input_tokens_per_request: float | None
    job_seconds: float | None
    tokens_per_item: float | None = None
    teacher_input_tokens_per_request: float | None = None


@dataclass
class _Cost:
    """A cost per request, or why there is none."""

    value: float | None
    inputs: list[str]
    measured: list[str]
    missing: list[str]

    def per_million(self, unit: str) -> CostFigure:
        return CostFigure(value=None if self.value is None else self.value * MILLION, unit=unit,
                          inputs=self.inputs, measured=self.measured, missing=self.missing)


def _throughput(report: Report, model: str) -> tuple[float | None, str | None]:
    """The model's measured items/s: batched (batch32, what a busy router's coalesced calls get) when measured,
    else batch 1."""
    throughput = getattr(report, model).throughput or {}
    for batch in ("batch32", "batch1"):
        if throughput.get(batch):
            return float(throughput[batch]), batch
    return None, None


def _hourly(price: float | None, price_field: str, items_per_second: float | None, model: str,
            spec: EconomicsSpec, items_per_request: float) -> _Cost:
    inputs, measured = [price_field, "utilization"], [f"{model}_items_per_second"]
    missing = [price_field] if price is None else []
    if items_per_second is None:
        missing.append(f"latency in evaluation.metrics (the {model}'s throughput was not measured)")
    if missing:
        return _Cost(None, inputs, measured, missing)
    assert price is not None and items_per_second is not None
    return _Cost(price / (3600 * items_per_second * spec.utilization) * items_per_request, inputs, measured, [])


def _tokens(spec: EconomicsSpec, report: Report, measured: Measured) -> tuple[dict[str, float], list[str]]:
    """Input and output tokens per request: the spec's, else what the job measured; and the fields still needed."""
    values: dict[str, float] = {}
    missing: list[str] = []
    generation = report.teacher_generation
    if spec.input_tokens_per_request is not None:
        values["input_tokens_per_request"] = spec.input_tokens_per_request
    elif generation is not None and generation.prompt_tokens and generation.rows:
        values["input_tokens_per_request"] = generation.prompt_tokens / generation.rows  # the teacher's own prompt
    elif measured.input_tokens_per_request is not None:
        values["input_tokens_per_request"] = measured.input_tokens_per_request
        if measured.teacher_input_tokens_per_request is not None:
            values["teacher_input_tokens_per_request"] = measured.teacher_input_tokens_per_request
    else:
        missing.append("inputTokensPerRequest")
    if spec.output_tokens_per_request is not None:
        values["output_tokens_per_request"] = spec.output_tokens_per_request
    elif generation is not None and generation.completion_tokens is not None and generation.rows:
        values["output_tokens_per_request"] = generation.completion_tokens / generation.rows
    elif report.task == "sequence-classification":
        values["output_tokens_per_request"] = 0.0  # a classifier answers with a label, not tokens
    else:
        missing.append("outputTokensPerRequest")
    return values, missing


def _teacher_cost(spec: EconomicsSpec, report: Report, tokens: dict[str, float], token_missing: list[str],
                  items_per_request: float | None) -> _Cost:
    if spec.teacher_price_per_million_input_tokens is not None:
        assert spec.teacher_price_per_million_output_tokens is not None  # the spec requires both
        inputs = ["teacherPricePerMillionInputTokens", "teacherPricePerMillionOutputTokens"]
        teacher_input = "teacher_input_tokens_per_request" if "teacher_input_tokens_per_request" in tokens \
            else "input_tokens_per_request"  # the teacher's own tokens where measured: what its price counts
        used: list[str] = [k for k in (teacher_input, "output_tokens_per_request") if k in tokens]
        if token_missing:
            return _Cost(None, inputs, used, token_missing)
        cost = (tokens[teacher_input] * spec.teacher_price_per_million_input_tokens
                + tokens["output_tokens_per_request"] * spec.teacher_price_per_million_output_tokens) / MILLION
        return _Cost(cost, inputs, used, [])
    if spec.teacher_price_per_hour is None:
        return _Cost(None, [], [], ["teacherPricePerHour (self-hosted) or teacherPricePerMillionInputTokens and "
                                    "teacherPricePerMillionOutputTokens (an API)"])
    rate, _ = _throughput(report, "teacher")
    if items_per_request is None:
        return _Cost(None, ["teacherPricePerHour"], [], token_missing)
    return _hourly(spec.teacher_price_per_hour, "teacherPricePerHour", rate, "teacher", spec, items_per_request)


def _items_per_request(report: Report, tokens: dict[str, float], measured: Measured) -> float | None:
    """Timed items one request costs: 1 for classification; for a causal LM its tokens (prompt and answer) over
    the tokens of a timed item (answer tokens priced like prompt tokens: a lower bound for generation)."""
    if report.task == "sequence-classification":
        return 1.0
    if measured.tokens_per_item is None or "output_tokens_per_request" not in tokens \
            or "input_tokens_per_request" not in tokens:
        return None
    return (tokens["input_tokens_per_request"] + tokens["output_tokens_per_request"]) / measured.tokens_per_item


def _routing(report: Report) -> Routing | None:
    """The frontier the served threshold comes from (a causal LM's generation frontier, when built)."""
    return report.generation_routing or report.routing


def economics(spec: EconomicsSpec, report: Report, measured: Measured) -> Economics:
    """The report's `economics` for a finished evaluation (`report` without it). Figures whose inputs are
    missing are null and name the fields they need; nothing here raises for a missing price."""
    per_m = f"{spec.currency} per 1M requests"
    notes: list[str] = []
    tokens, token_missing = _tokens(spec, report, measured)
    items = _items_per_request(report, tokens, measured)
    if report.task == "causal-lm":
        notes.append("causal LM: throughput is of forward passes over eval texts; answer tokens are priced like "
                     "prompt tokens, so hourly costs are a lower bound for generation")
    if spec.teacher_price_per_million_input_tokens is not None and "teacher_input_tokens_per_request" in tokens:
        notes.append(f"the teacher is priced on its own tokens ({tokens['teacher_input_tokens_per_request']:.1f} "
                     f"per request); the student's throughput on the student's "
                     f"({tokens['input_tokens_per_request']:.1f})")
    elif spec.teacher_price_per_million_input_tokens is not None and spec.input_tokens_per_request is None \
            and measured.input_tokens_per_request is not None \
            and tokens.get("input_tokens_per_request") == measured.input_tokens_per_request:
        notes.append("the teacher's input tokens are counted with the student's tokenizer (the teacher's own count "
                     "was not measured): set inputTokensPerRequest for what its API counts")
    student_rate, batch = _throughput(report, "student_quantized")
    teacher = _teacher_cost(spec, report, tokens, token_missing, items)
    if items is None:
        student = _Cost(None, ["studentPricePerHour"], [], token_missing or ["latency in evaluation.metrics"])
    else:
        student = _hourly(spec.student_price_per_hour, "studentPricePerHour", student_rate, "student", spec, items)
    routing = _routing(report)
    point = routing.recommended if routing else None
    measured_values: dict[str, float] = dict(tokens)
    if student_rate is not None:
        measured_values["student_items_per_second"] = student_rate
    teacher_rate, _ = _throughput(report, "teacher")
    if teacher_rate is not None:
        measured_values["teacher_items_per_second"] = teacher_rate

    if point is not None:
        measured_values["escalation_rate"] = point.escalation_rate
        cascade = _Cost(None if student.value is None or teacher.value is None
                        else student.value + point.escalation_rate * teacher.value,
                        sorted({*student.inputs, *teacher.inputs}), [*student.measured, *teacher.measured,
                                                                      "escalation_rate"],
                        [*student.missing, *teacher.missing])
        served, served_name = cascade, "cascade"
    else:
        cascade = _Cost(None, [], [], ["a routing frontier (the evaluation built none: " +
                                       (report.routing_note or "no recommended threshold") + ")"])
        served, served_name = student, "student-only"
        notes.append("no recommended routing point: the cost ratio, saving and payback compare the student alone "
                     "with the teacher")

    ratio_value = None
    if teacher.value is not None and served.value:
        ratio_value = teacher.value / served.value
    ratio = CostFigure(value=ratio_value, unit=f"x (teacher-only over {served_name})",
                       inputs=sorted({*teacher.inputs, *served.inputs}),
                       measured=sorted({*teacher.measured, *served.measured}),
                       missing=sorted({*teacher.missing, *served.missing}))

    per_request_saving = None if teacher.value is None or served.value is None else teacher.value - served.value
    if per_request_saving is not None and per_request_saving <= 0:
        notes.append(f"the {served_name} costs as much as the teacher or more (it escalates "
                     f"{point.escalation_rate:.1%} of requests)" if point is not None else
                     f"the {served_name} costs as much as the teacher or more")
    daily = None
    saving_missing = sorted({*teacher.missing, *served.missing} | ({"requestsPerDay"}
                                                                     if spec.requests_per_day is None else set()))
    if per_request_saving is not None and spec.requests_per_day is not None:
        daily = per_request_saving * spec.requests_per_day
    monthly = CostFigure(value=None if daily is None else daily * DAYS_PER_MONTH, unit=f"{spec.currency} per month",
                         inputs=sorted({*ratio.inputs, "requestsPerDay"}), measured=ratio.measured,
                         missing=saving_missing)

    job_inputs, job_measured, job_missing = ["rayClusterPricePerHour"], ["job_seconds"], []
    labelling = report.teacher_generation.cost if report.teacher_generation else None
    if labelling is not None:
        measured_values["teacher_labelling_cost"] = labelling
        job_measured.append("teacher_labelling_cost")
    if measured.job_seconds is not None:
        measured_values["job_seconds"] = measured.job_seconds
    if spec.ray_cluster_price_per_hour is None:
        job_missing.append("rayClusterPricePerHour")
    job_value = None
    if not job_missing and measured.job_seconds is not None:
        assert spec.ray_cluster_price_per_hour is not None
        job_value = spec.ray_cluster_price_per_hour * measured.job_seconds / 3600 + (labelling or 0.0)
    job = CostFigure(value=job_value, unit=spec.currency, inputs=job_inputs, measured=job_measured,
                     missing=job_missing)

    payback_value = None
    if job_value is not None and daily is not None:
        if daily > 0:
            payback_value = job_value / daily
        else:
            notes.append("with no saving per request the job never pays back")
    payback = CostFigure(value=payback_value, unit="days", inputs=sorted({*job.inputs, *monthly.inputs}),
                         measured=sorted({*job.measured, *monthly.measured}),
                         missing=sorted({*job.missing, *monthly.missing}))

    frontier = []
    if routing is not None and student.value is not None and teacher.value is not None:
        frontier = [CostPoint(threshold=p.threshold, escalation_rate=p.escalation_rate, accuracy=p.accuracy,
                              cost_per_million_requests=(student.value + p.escalation_rate * teacher.value) * MILLION)
                    for p in routing.frontier]
    inputs = {k: v for k, v in spec.to_wire().items() if isinstance(v, int | float) and not isinstance(v, bool)}
    return Economics(
        currency=spec.currency, inputs=inputs, measured=measured_values, throughput_batch=batch,
        teacher_per_million_requests=teacher.per_million(per_m),
        student_per_million_requests=student.per_million(per_m),
        cascade_per_million_requests=cascade.per_million(per_m), cost_ratio=ratio, monthly_saving=monthly,
        job_cost=job, payback_days=payback, days_per_month=DAYS_PER_MONTH, frontier=frontier, notes=notes,
    )
