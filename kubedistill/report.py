"""`report.json`: the gap evaluation, written by the pipeline and read by report.md, the CLI and the benchmarks;
every key is a typed field. `job_results` builds a DistillationJob's `status.results` from it."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from kubedistill.api.distillationjob import JobResults
from kubedistill.artifacts import model_repository_uri, report_uri


class _Keys(BaseModel):
    """Every key is typed: a writer that adds one declares it here, so readers never look keys up by name."""

    model_config = ConfigDict(extra="forbid")


class Latency(_Keys):
    p50: float = Field(description="Median latency at batch 1, milliseconds.")
    p95: float = Field(description="95th percentile at batch 1, milliseconds.")


class ModelReport(_Keys):
    """One model's cost and quality. A remote endpoint teacher has no graph here: its params, size and
    latency are null, and its metrics hold only what the endpoint could score (perplexity, or nothing)."""

    params: int | None
    size_bytes: int | None
    metrics: dict[str, float] = Field(description="accuracy and macro_f1 (classification) or perplexity.")
    latency_ms: Latency | None
    latency_ms_batch32: Latency | None = Field(default=None, description="p50/p95 at batch 32, milliseconds.")
    throughput: dict[str, float] | None = Field(default=None, description="Items/s by batch (batch1, batch32).")
    onnx: str | None = Field(default=None, description="The graph's file name in onnx/ (None: an endpoint).")
    endpoint: str | None = Field(default=None, description="An endpoint teacher's URL.")
    model: str | None = Field(default=None, description="The model an endpoint teacher was asked for.")


class FrontierPoint(_Keys):
    threshold: float
    escalation_rate: float
    accuracy: float


class SignalSweep(_Keys):
    """One confidence signal's frontier and the point it recommends (all None: no point met the target)."""

    recommended_threshold: float | None
    escalation_rate: float | None
    accuracy: float | None
    frontier: list[FrontierPoint] = Field(default_factory=list, description="Empty in a compacted copy.")


class Routing(_Keys):
    signal: str = "max-probability"
    frontier: list[FrontierPoint]
    recommended_threshold: float | None
    target: float
    recommended: FrontierPoint | None = Field(default=None, description="The point at that threshold.")
    teacher_accuracy: float | None = Field(default=None, description="The teacher's accuracy the target is a share of.")
    student_accuracy: float | None = Field(default=None, description="The quantized student's accuracy alone.")
    reference: str | None = Field(default=None, description="What accuracy is measured against: gold labels, "
                                                             "the teacher (no labels) or held-out text.")
    signals: dict[str, SignalSweep] | None = Field(default=None, description="Every signal swept, by name.")

    def signal_thresholds(self) -> dict[str, float]:
        """The recommended threshold of every signal that found one (the main signal's at least)."""
        out = {name: sweep.recommended_threshold for name, sweep in (self.signals or {}).items()
               if sweep.recommended_threshold is not None}
        if self.recommended_threshold is not None:
            out.setdefault(self.signal, self.recommended_threshold)
        return out


class CascadeModel(_Keys):
    """One model of the evaluated cascade (`evaluation.tiers`), scored alone on the eval split."""

    name: str = Field(description="`student` (the quantized one, as served), a tier's name, or `teacher`.")
    uri: str | None = Field(default=None, description="evaluation.tiers[].uri, for a tier.")
    params: int | None
    unit_cost: float = Field(description="What one request through it costs, in the cascade's cost_basis.")
    accuracy: float = Field(description="Alone, against the reference (gold labels, or the teacher's answers).")


class CascadeSetting(_Keys):
    """A setting of the cascade's thresholds and what it does, per model in cascade order."""

    thresholds: dict[str, float] = Field(description="By model, all but the teacher: below it a request goes on.")
    reach: dict[str, float] = Field(description="Share of requests each model sees (student 1.0).")
    answered: dict[str, float] = Field(description="Share of requests each model answers.")
    accuracy: float
    cost: float = Field(description="Expected cost per request: the sum of reach × unit_cost.")
    relative_cost: float = Field(description="cost over the teacher's unit_cost alone (teacher-only serving).")


class Cascade(_Keys):
    """evaluation.tiers: the student, the tiers and the teacher evaluated together as a cascade on the eval split
    (max-probability signal; each model's own tokenizer). Thresholds are searched on a grid of each model's
    confidence quantiles and never increase along the cascade."""

    signal: str = "max-probability"
    models: list[CascadeModel] = Field(description="In cascade order, the teacher last.")
    cost_basis: Literal["latency", "parameters"] = Field(
        description="`latency`: unit cost is each model's measured p50 at batch 1 (ms; evaluation.metrics lists "
        "latency); `parameters`: its parameter count (latency not measured).")
    target: float = Field(description="evaluation.routingTarget: the share of the teacher's accuracy to keep.")
    teacher_accuracy: float
    recommended: CascadeSetting | None = Field(description="The cheapest setting that keeps the target (null: none).")
    frontier: list[CascadeSetting] = Field(default_factory=list, description="The cheapest setting for each "
                                           "accuracy reached, by cost.")

    def recommended_thresholds(self) -> dict[str, float] | None:
        return dict(self.recommended.thresholds) if self.recommended is not None else None


class Gate(_Keys):
    min_retention: float | None
    passed: bool
    shortfall: float = Field(default=0.0, description="How far retention fell below min_retention (0 when passed).")
    capture_passed: bool | None = Field(default=None, description="dataset.capture.minGain: whether the new student "
                                        "gained enough agreement on captured traffic (null: not gated).")


class CaptureComparison(_Keys):
    """dataset.capture: the new student against the one that was serving, on held-out captured traffic, both by
    agreement with the teacher's answers. The serving student's answers are those the router recorded."""

    uri: str | None = Field(description="Where the captured traffic was read.")
    rows: int = Field(description="Held-out captured rows compared on.")
    served_versions: list[str] = Field(description="Model versions that answered them while serving.")
    served_agreement: float = Field(description="Share of the rows where the serving student's answer was the "
                                    "teacher's.")
    new_agreement: float = Field(description="The same for the new (quantized) student.")
    gain: float = Field(description="new_agreement - served_agreement.")
    min_gain: float | None = Field(description="dataset.capture.minGain (null: not gated).")
    train_rows: int | None = Field(default=None, description="Captured rows in the training split (repeats "
                                   "included).")
    train_share: float | None = Field(default=None, description="Their share of the training rows.")


class LatencyMethod(_Keys):
    """How latency was measured."""

    threads: int = Field(description="ONNX Runtime intra-op threads (0: its default).")
    warmup: int = Field(description="Untimed runs before measuring.")
    runtime: str
    batch_sizes: list[int]


class Pruning(_Keys):
    """What structured pruning did to the student (`compression.pruning`)."""

    method: Literal["layers", "heads"]
    params_before: int
    params_after: int
    layers_kept: list[int] | None = Field(default=None, description="Student layers kept (method layers).")
    heads_kept_per_layer: int | None = Field(default=None, description="Attention heads left in each layer.")


class TeacherGeneration(_Keys):
    """What a language-model teacher did to label the data (`teacher.prompt`), and what it cost."""

    method: str = Field(description="`full-answer scoring` (a local causal LM), or how an endpoint answered.")
    model: str | None = Field(default=None, description="The teacher model (URI, or the endpoint's model name).")
    rows: int = Field(description="Texts labelled (train and eval).")
    hard_labels: bool = Field(default=False, description="True: hard-label distillation (no logprobs from the "
                                                         "teacher).")
    calibrated: bool = Field(default=False, description="Contextual calibration applied.")
    prior: list[float] | None = Field(default=None, description="The teacher's label prior on content-free inputs.")
    accuracy: float | None = Field(default=None, description="Teacher accuracy against gold on eval.")
    accuracy_uncalibrated: float | None = Field(default=None, description="The same before calibration.")
    majority_baseline: float | None = Field(default=None, description="Accuracy of always answering train's "
                                                                      "most common label, on eval.")
    predicted_share: dict[str, float] | None = Field(default=None, description="Share of rows given each label.")
    unmatched_answers: int = Field(default=0, description="Answers that matched no label (not mapped to one).")
    prompt_tokens: int | None = Field(default=None, description="Prompt tokens sent to the teacher.")
    completion_tokens: int | None = Field(default=None, description="Tokens the teacher generated.")
    cost: float | None = Field(default=None, description="From teacher.endpoint.pricing; null without it.")
    rows_per_second: float | None = Field(default=None, description="Teacher-generation throughput.")
    reused_from: str | None = Field(default=None, description="distillation.teacherOutputsUri, when reused.")


class GenerationExample(_Keys):
    """One held-out prompt's answers, as the report shows them."""

    prompt: str = Field(description="The prompt's last 200 characters.")
    reference: str | None
    answers: dict[str, str] = Field(description="Each model's answer: teacher, student, student_quantized.")


class GenerationEval(_Keys):
    """How the generation metrics (evaluation.metrics rouge_l, chrf, exact_match) were measured: every model
    answered the same held-out prompts with the same settings."""

    prompts: int = Field(description="Held-out prompts answered.")
    max_new_tokens: int = Field(description="Tokens per answer, at most.")
    decoding: str = Field(default="greedy", description="How each model chose its tokens.")
    reference: str = Field(description="What the answers are scored against: the dataset's references "
                                       "(dataset.referenceField), the texts' continuations, or the teacher's answers.")
    runtime: str = Field(default="onnxruntime-genai", description="The builds that generated (the served ones).")
    precision: dict[str, str] = Field(description="Weights of each model's build (fp32, int8, int4).")
    tokens_per_second: dict[str, float] = Field(description="Answer tokens per second of each model, one prompt at "
                                                            "a time (the load excluded).")
    speedup: float | None = Field(default=None, description="The quantized student's tokens/s over the teacher's.")
    examples: list[GenerationExample] = Field(default_factory=list, description="The first few prompts' answers.")


class CrossTokenizer(_Keys):
    """How a causal-LM student with another tokenizer than the teacher's was taught (no logit KD possible)."""

    method: Literal["sequence-kd", "uld"] = Field(description="`sequence-kd`: the teacher's greedy answers as "
                                                  "hard tokens; `uld`: plus Universal Logit Distillation.")
    note: str = Field(description="What happened, in a sentence.")
    teacher_vocabulary: int = Field(description="Tokens of the teacher's tokenizer.")
    student_vocabulary: int = Field(description="Tokens of the student's tokenizer.")


class CostFigure(_Keys):
    """One economic figure and where it came from: `inputs` are evaluation.economics fields (camelCase, as in the
    spec), `measured` are what this job measured (names of Economics.measured). `value` is null when an input is
    missing; `missing` names the fields to set."""

    value: float | None
    unit: str = Field(description="e.g. `USD per 1M requests`, `x`, `days`.")
    inputs: list[str] = Field(default_factory=list)
    measured: list[str] = Field(default_factory=list)
    missing: list[str] = Field(default_factory=list, description="evaluation.economics fields it needs.")


class CostPoint(_Keys):
    """A point of the routing frontier with its cost."""

    threshold: float
    escalation_rate: float
    accuracy: float
    cost_per_million_requests: float


class Economics(_Keys):
    """What the student saves (`evaluation.economics`): prices and traffic from the spec, throughput, tokens,
    escalation and duration from the job. Cost per request of a model priced per hour: price / (3600 ×
    throughput × utilization); of an API teacher: tokens × price per token. The cascade always runs the student
    and adds the teacher for the share escalated."""

    currency: str
    inputs: dict[str, float] = Field(description="The evaluation.economics values used (camelCase).")
    measured: dict[str, float] = Field(description="What the job measured, by name: student_items_per_second, "
                                                   "teacher_items_per_second, input_tokens_per_request, "
                                                   "output_tokens_per_request, escalation_rate, job_seconds, "
                                                   "teacher_labelling_cost.")
    throughput_batch: str | None = Field(default=None, description="Which measured throughput prices hourly "
                                                                   "models: batch32 (batched serving) or batch1.")
    teacher_per_million_requests: CostFigure
    student_per_million_requests: CostFigure
    cascade_per_million_requests: CostFigure
    cost_ratio: CostFigure = Field(description="Teacher-only over the cascade (student-only without a frontier).")
    monthly_saving: CostFigure = Field(description="(teacher-only − cascade) × requestsPerDay × days per month.")
    job_cost: CostFigure = Field(description="Ray cluster price × the job's measured duration (+ an API "
                                             "teacher's labelling cost).")
    payback_days: CostFigure = Field(description="The job's cost over the daily saving (null: no saving).")
    days_per_month: float
    frontier: list[CostPoint] = Field(default_factory=list, description="Cost and quality along the frontier.")
    notes: list[str] = Field(default_factory=list, description="Assumptions and what was left out.")
class EnsembleMember(_Keys):
    """One of several teachers, scored alone on the eval split."""

    model: str | None = Field(description="What it is: a model URI, or a language model and its endpoint.")
    method: str = Field(description="How it taught: a classifier's adaptation (head, finetune, none) or prompt.")
    weight: float = Field(description="Its weight in the combination, normalised over the teachers.")
    metrics: dict[str, float] = Field(description="accuracy against gold (labelled data) and agreement with the "
                                      "combination's argmax.")


class Ensemble(_Keys):
    """Several teachers (`teachers`) and their combination, the soft targets the student learned from."""

    combination: Literal["mean", "product"] = Field(description="distillation.ensemble as run.")
    members: list[EnsembleMember]
    metrics: dict[str, float] = Field(description="The combination's accuracy against gold (labelled data).")


class Report(_Keys):
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
    speedup_batch32: float | None = Field(default=None, description="Teacher p50 over the quantized student's, "
                                                                    "batch 32.")
    latency_settings: LatencyMethod | None = None
    quality_reference: str | None = Field(default=None, description="What quality is measured against.")
    quantization_accuracy_drop: float | None = Field(default=None, description="Student minus quantized student, "
                                                                               "primary metric (classification).")
    eval_samples: int | None = Field(default=None, description="Eval examples scored.")
    quantization: str | None = Field(default=None, description="compression.quantization as run.")
    onnx_max_abs_diff: dict[str, float] | None = Field(default=None, description="Largest |PyTorch - ONNX| logit "
                                                                                 "per exported model.")
    pruning: Pruning | None = Field(default=None, description="What pruning did; None: no pruning.")
    teacher_note: str | None = Field(default=None, description="How an endpoint teacher was scored.")
    teacher_generation: TeacherGeneration | None = Field(
        default=None, description="How a language-model teacher labelled the data (teacher.prompt).")
    routing_note: str | None = Field(default=None, description="Why there is no frontier, or what it measures.")
    capture: CaptureComparison | None = Field(
        default=None, description="dataset.capture: the new student against the serving one on captured traffic.")
    ensemble: Ensemble | None = Field(default=None, description="Several teachers: each one's quality and the "
                                      "combination's (the report's teacher is the combination).")
    cross_tokenizer: CrossTokenizer | None = Field(
        default=None, description="Set when teacher and student tokenizers differ: the method used instead of "
        "logit KD.")
    generation_routing: Routing | None = Field(
        default=None, description="Causal LM: the frontier of answers generated on held-out prompts (the "
        "student's confidence in its own answer vs the cascade's quality), per token-level signal; its "
        "recommended threshold is the one serving.json and status carry.")
    economics: Economics | None = Field(default=None, description="Costs and savings (evaluation.economics).")
    cascade: Cascade | None = Field(default=None, description="evaluation.tiers: the tiered cascade's frontier and "
                                    "the thresholds it recommends per model.")

    primary: str | None = Field(default=None, description="The metric retention and the gate use (evaluation."
                                                       "metrics); None: the task's default.")
    perplexity_scope: Literal["answers", "texts"] | None = Field(
        default=None, description="Causal LM: what perplexity (and next-token accuracy, agreement, the token-level "
        "frontier) is over: `answers`, the reference answers' tokens each given its held-out prompt; `texts`, every "
        "token of the held-out texts.")
    perplexity_rows: int | None = Field(
        default=None, description="With perplexity_scope `answers`: the held-out rows scored, those whose whole "
        "reference fits after the prompt in task.maxLength in every model's tokens.")
    generation: GenerationEval | None = Field(
        default=None, description="Causal LM with a generation metric: how the models' answers were produced and "
        "how fast.")

    @property
    def primary_metric(self) -> str:
        if self.primary is not None:
            return self.primary
        return "perplexity" if self.task == "causal-lm" else "accuracy"

    def gate_failure(self) -> str:
        """Why the gate failed, for people (empty when it passed)."""
        if self.gate.passed:
            return ""
        reasons = []
        if self.gate.min_retention is not None and (self.retention is None
                                                    or self.retention < self.gate.min_retention):
            retention = "unknown" if self.retention is None else f"{self.retention:.4f}"
            reasons.append(f"retention {retention} is {self.shortfall():.4f} below evaluation.gate.minRetention "
                           f"{self.gate.min_retention}")
        if self.gate.capture_passed is False and self.capture is not None:
            reasons.append(f"agreement on captured traffic {self.capture.new_agreement:.4f} against the serving "
                           f"student's {self.capture.served_agreement:.4f} gains {self.capture.gain:+.4f}, less "
                           f"than dataset.capture.minGain {self.capture.min_gain:g}")
        return "; ".join(reasons) or "the evaluation gate did not pass"

    def shortfall(self) -> float:
        """How far retention is below the gate (0 when it passed or there is no gate)."""
        if self.gate.min_retention is None:
            return 0.0
        return max(0.0, self.gate.min_retention - (self.retention or 0.0))


def _rounded(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def job_results(report: Report, output_uri: str) -> JobResults:
    """The headline numbers a DistillationJob's status carries (`status.results`), for a job whose output
    is `output_uri`. The one place they are assembled. A causal LM's threshold is the generation frontier's
    (what the router compares with), when the evaluation built one."""
    routing = report.generation_routing or report.routing
    threshold = routing.recommended_threshold if routing else None
    point = None
    if routing and threshold is not None:
        point = min(routing.frontier, key=lambda p: abs(p.threshold - threshold))
    metric = report.primary_metric
    return JobResults(
        retention=_rounded(report.retention, 4),
        agreement=_rounded(report.agreement, 4),
        speedup=_rounded(report.speedup, 2),
        generation_speedup=_rounded(report.generation.speedup, 2) if report.generation else None,
        compression=_rounded(report.compression, 2),
        teacher_metric=report.teacher.metrics.get(metric),
        student_metric=report.student_quantized.metrics.get(metric),
        recommended_threshold=threshold,
        recommended_thresholds=(routing.signal_thresholds() or None) if routing else None,
        escalation_rate=None if point is None else round(point.escalation_rate, 4),
        cascade_thresholds=report.cascade.recommended_thresholds() if report.cascade else None,
        cost_ratio=_rounded(report.economics.cost_ratio.value, 2) if report.economics else None,
        payback_days=_rounded(report.economics.payback_days.value, 2) if report.economics else None,
        gate_passed=report.gate.passed,
        artifact_uri=model_repository_uri(output_uri),
        report_uri=report_uri(output_uri),
        model_version=report.model_version,
        capture_gain=None if report.capture is None else round(report.capture.gain, 4),
        cross_tokenizer=report.cross_tokenizer.method if report.cross_tokenizer else None,
    )


def load_report(text: str) -> Report:
    return Report.model_validate_json(text)


def report_dict(report: Report) -> dict[str, Any]:
    return report.model_dump(mode="json")
