"""The StudentDeployment resource: "serve that student", with Triton and a confidence router in front."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from kubedistill.api.base import (
    CAPTURE_URI_PATTERN,
    CONDITIONS_LIST,
    DNS_LABEL_PATTERN,
    ApiModel,
    Condition,
    JobReference,
    ResourceRequirements,
    SecretKeyRef,
    cel,
    cel_rules,
    check_capture_uri,
)
from kubedistill.api.distillationjob import HTTP_URL_PATTERN, MODEL_URI_PATTERN
from kubedistill.api.meta import ObjectMeta
from kubedistill.redaction import compile_patterns

ConfidenceSignal = Literal["max-probability", "margin", "entropy", "token-quantile", "min-token-probability",
                           "mean-logprob"]
RouterMode = Literal["route", "student-only", "teacher-only", "shadow"]
TeacherProtocol = Literal["kserve-v1", "kserve-v2", "openai"]
DeploymentPhase = Literal["Waiting", "Progressing", "Ready", "Degraded"]
ServiceType = Literal["ClusterIP", "NodePort", "LoadBalancer"]
TritonBackend = Literal["auto", "vllm"]
VllmDType = Literal["auto", "float16", "bfloat16"]

TRITON_IMAGE = "nvcr.io/nvidia/tritonserver:24.10-py3"
MAX_TIERS = 8  # models between the student and the teacher, at most
# Triton with its vLLM backend; the backend returns token log-probabilities (`return_logprobs`) from 25.x on.
TRITON_VLLM_IMAGE = "nvcr.io/nvidia/tritonserver:25.10-vllm-python-py3"
# Triton's HTTP, gRPC and metrics ports, taken in every serving pod.
TRITON_PORTS = (8000, 8001, 8002)


class ModelSource(ApiModel):
    """Where the served model comes from."""

    model_config = ApiModel.model_config | {
        "json_schema_extra": cel_rules(
            cel("has(self.jobRef) != has(self.modelRepositoryUri)",
                "set exactly one of source.jobRef and source.modelRepositoryUri"),
        )
    }

    job_ref: JobReference | None = Field(
        default=None, description="Serve what this DistillationJob produced, once it has succeeded and passed its gate."
    )
    model_repository_uri: str | None = Field(
        default=None, description="A Triton model repository written by a job (`s3://`, `pvc://`, `file://`).",
        pattern=MODEL_URI_PATTERN,
    )
    s3_credentials_secret: str | None = Field(
        default=None, description="Secret with AWS credentials for an `s3://` repository.", pattern=DNS_LABEL_PATTERN
    )

    @model_validator(mode="after")
    def _one_source(self) -> ModelSource:
        if (self.job_ref is None) == (self.model_repository_uri is None):
            raise ValueError("source: set exactly one of source.jobRef and source.modelRepositoryUri")
        return self


class AutoscalingSpec(ApiModel):
    """A HorizontalPodAutoscaler on CPU utilisation."""

    model_config = ApiModel.model_config | {
        "json_schema_extra": cel_rules(
            cel("self.minReplicas <= self.maxReplicas", "autoscaling.minReplicas must not exceed maxReplicas",
                ".minReplicas"),
        )
    }

    min_replicas: int = Field(default=1, description="Fewest replicas.", ge=1, le=1000)
    max_replicas: int = Field(description="Most replicas.", ge=1, le=1000)
    target_cpu_utilization: int = Field(default=70, description="Target average CPU utilisation, percent.",
                                        ge=1, le=100)

    @model_validator(mode="after")
    def _bounds(self) -> AutoscalingSpec:
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                f"autoscaling.minReplicas ({self.min_replicas}) must not exceed maxReplicas ({self.max_replicas})"
            )
        return self


class DynamicBatching(ApiModel):
    """Triton's dynamic batcher."""

    enabled: bool = Field(default=True, description="Batch concurrent requests together.")
    max_queue_delay_microseconds: int = Field(default=100, description="Longest wait to fill a batch.",
                                              ge=0, le=10_000_000)
    preferred_batch_sizes: list[int] | None = Field(default=None, description="Batch sizes Triton aims for.",
                                                    max_length=16)


class VllmSpec(ApiModel):
    """vLLM engine settings of a causal-LM student served by Triton's vLLM backend (`triton.backend: vllm`)."""

    gpu_memory_utilization: float = Field(
        default=0.9, description="Share of each GPU's memory vLLM takes (weights and KV cache), for all the models "
        "of the pod together: a colocated teacher gets three quarters of it, the student one quarter.", gt=0, le=1,
    )
    max_model_len: int | None = Field(default=None, description="Context length (prompt plus generated tokens); "
                                      "unset: the model's own.", ge=16, le=1_048_576)
    max_num_seqs: int | None = Field(default=None, description="Sequences vLLM batches per step; unset: vLLM's "
                                     "default.", ge=1, le=65_536)
    dtype: VllmDType = Field(default="auto", description="Weights and activations: `auto` (the export's float16), "
                             "`float16` or `bfloat16`.")


class TritonSpec(ApiModel):
    """The Triton Inference Server container."""

    model_config = ApiModel.model_config | {
        "json_schema_extra": cel_rules(
            cel(
                "!has(self.dynamicBatching) || !has(self.dynamicBatching.preferredBatchSizes) || "
                "self.dynamicBatching.preferredBatchSizes.all(b, b >= 1 && b <= self.maxBatchSize)",
                "triton.dynamicBatching.preferredBatchSizes must each be between 1 and triton.maxBatchSize",
                ".dynamicBatching.preferredBatchSizes",
            ),
            cel("self.backend != 'vllm' || self.gpus >= 1",
                "triton.backend vllm needs triton.gpus of at least 1 (vLLM serves on GPUs)", ".gpus"),
        )
    }

    image: str = Field(default=TRITON_IMAGE, description="Triton image (ONNX Runtime and python backends); with "
                       f"`backend: vllm` the default is `{TRITON_VLLM_IMAGE}`.", min_length=1)
    backend: TritonBackend = Field(
        default="auto", description="`auto`: what the job exported (ONNX Runtime for classification, the python "
        "backend running ONNX Runtime GenAI for causal-lm). `vllm`: a causal-lm student (and its colocated teacher) "
        "on Triton's vLLM backend, from the float16 safetensors the job exports; needs `gpus` of at least 1.",
    )
    vllm: VllmSpec = Field(default_factory=VllmSpec, description="vLLM engine settings (`backend: vllm`).")
    resources: ResourceRequirements = Field(default_factory=ResourceRequirements, description="CPU and memory.")
    gpus: int = Field(default=0, description="GPUs (`nvidia.com/gpu`); 0 serves on CPU.", ge=0, le=16)
    max_batch_size: int = Field(default=32, description="Largest batch Triton forms.", ge=1, le=4096)
    dynamic_batching: DynamicBatching = Field(default_factory=DynamicBatching, description="Dynamic batching.")
    instance_count: int = Field(default=1, description="Model instances per replica.", ge=1, le=64)

    @model_validator(mode="after")
    def _vllm_needs_gpus(self) -> TritonSpec:
        if self.backend == "vllm" and self.gpus < 1:
            raise ValueError("triton.gpus: triton.backend vllm serves on GPUs; set triton.gpus to 1 or more, or "
                             "use backend auto (ONNX Runtime on CPU)")
        return self

    @model_validator(mode="after")
    def _preferred_sizes_fit(self) -> TritonSpec:
        # Triton refuses a preferred size above max_batch_size; the served config must not drop it unseen.
        bad = [b for b in self.dynamic_batching.preferred_batch_sizes or [] if not 1 <= b <= self.max_batch_size]
        if bad:
            raise ValueError(
                f"triton.dynamicBatching.preferredBatchSizes: {bad} outside 1..triton.maxBatchSize "
                f"({self.max_batch_size}); remove them or raise maxBatchSize"
            )
        return self


class TeacherEndpointRef(ApiModel):
    """A remote teacher the router escalates to."""

    url: str = Field(description="Base URL of the teacher.", pattern=HTTP_URL_PATTERN)
    protocol: TeacherProtocol = Field(default="kserve-v1", description="`kserve-v1`, `kserve-v2` or `openai`.")
    model: str | None = Field(default=None, description="Model name at the endpoint.")
    timeout_seconds: float = Field(default=5.0, description="Timeout of one escalation.", gt=0, le=600)
    api_key_secret_ref: SecretKeyRef | None = Field(default=None, description="Secret key with the API key.")


class RouterTier(ApiModel):
    """A model between the student and the teacher: what the tier before it is unsure of comes here, and what
    this one is unsure of (confidence below its threshold) goes on to the next tier, the teacher last."""

    model_config = ApiModel.model_config | {
        "json_schema_extra": cel_rules(
            cel("has(self.model) != has(self.endpoint)", "set exactly one of the tier's model and endpoint"),
            cel("!has(self.endpoint) || !has(self.endpoint.apiKeySecretRef)",
                "a tier's endpoint takes no apiKeySecretRef (only router.teacher does)", ".endpoint"),
        )
    }

    name: str = Field(description="Name of the tier: `served_by` of its answers and the label of its metrics.",
                      pattern=DNS_LABEL_PATTERN, max_length=63)
    model: str | None = Field(default=None, description="A model in the same Triton model repository that takes the "
                              "student's inputs (its tokenizer) and returns logits over the labels.",
                              pattern=DNS_LABEL_PATTERN, max_length=63)
    endpoint: TeacherEndpointRef | None = Field(default=None, description="A remote model instead (as "
                                                "router.teacher).")
    threshold: float | None = Field(
        default=None, description="Its answers below this confidence go on to the next tier; at most the threshold "
        "of the tier before it (the student's: router.threshold). Unset: the one the job recommends for a tier of "
        "this name (its evaluation.tiers, status.results.cascadeThresholds; max-probability signal).", ge=0, le=1)

    @model_validator(mode="after")
    def _one_source(self) -> RouterTier:
        if (self.model is None) == (self.endpoint is None):
            raise ValueError(f"router.tiers: tier {self.name!r}: set exactly one of model (in this Triton) and "
                             "endpoint (remote)")
        if self.endpoint is not None and self.endpoint.api_key_secret_ref is not None:
            raise ValueError(f"router.tiers: tier {self.name!r}: endpoint.apiKeySecretRef is not supported for a "
                             "tier; only router.teacher carries a key")
        return self


def tier_order_problem(tiers: list[RouterTier], student_threshold: float | None) -> str | None:
    """Why the tiers' thresholds are out of order (None: they are not): along the cascade each threshold is at
    most the one before it, the student's first (a bigger model is trusted at a lower confidence)."""
    previous, before = student_threshold, "router.threshold (the student's)"
    for i, tier in enumerate(tiers):
        if tier.threshold is None:
            continue  # filled from the job's recommendation, then checked again
        if previous is not None and tier.threshold > previous:
            return (f"router.tiers[{i}].threshold: {tier.threshold} is above {previous}, the threshold of "
                    f"{before}: thresholds must not increase along the tiers")
        previous, before = tier.threshold, f"tier {tier.name!r}"
    names = [t.name for t in tiers]
    reserved = sorted({n for n in names if n in ("student", "teacher")} | {n for n in names if names.count(n) > 1})
    if reserved:
        return f"router.tiers: names {reserved} repeat or are taken (student, teacher): give each tier its own name"
    return None


CASCADE_SIGNAL = "max-probability"  # the signal the job's cascade thresholds are recommended for


def fill_tier_thresholds(tiers: list[RouterTier], recommended: dict[str, float] | None, signal: str,
                         source: str) -> list[RouterTier] | str:
    """The tiers with each unset threshold taken from `recommended` (by tier name: the job's cascade thresholds,
    from status.results.cascadeThresholds or serving.json), or why that cannot be done, naming the field.
    `source` says where `recommended` came from, for the message."""
    filled = []
    for i, tier in enumerate(tiers):
        if tier.threshold is not None:
            filled.append(tier)
            continue
        field = f"router.tiers[{i}].threshold"
        if signal != CASCADE_SIGNAL:
            return (f"{field}: unset, and {source} recommends tier thresholds for the {CASCADE_SIGNAL} signal, not "
                    f"{signal}; set the threshold or use confidenceSignal {CASCADE_SIGNAL}")
        if not recommended or tier.name not in recommended:
            evaluated = sorted(set(recommended or {}) - {"student"})
            return (f"{field}: unset, and {source} recommends no threshold for a tier named {tier.name!r} (its "
                    f"evaluation.tiers: {evaluated or 'none'}); set the threshold, or name a tier the job evaluated")
        filled.append(tier.model_copy(update={"threshold": recommended[tier.name]}))
    return filled


class RouterAuth(ApiModel):
    """Clients of the router must present a bearer token of its own."""

    api_key_secret_ref: SecretKeyRef = Field(
        description="Secret key holding the token clients send as `Authorization: Bearer <token>` on the model "
        "endpoints (401 without it or with another); /healthz, /readyz and /metrics stay open for probes and "
        "scraping."
    )


class Coalescing(ApiModel):
    """The router's batching: concurrent requests share Triton calls."""

    enabled: bool = Field(
        default=True,
        description="While `maxCallsInFlight` calls to a model are out, new requests wait and leave together in the "
        "next call (up to triton.maxBatchSize); a lone request never waits. Off: every request is its own call.",
    )
    max_calls_in_flight: int | None = Field(
        default=None, description="Calls to one model at once; unset: twice triton.instanceCount.", ge=1, le=1024
    )


class CaptureSpec(ApiModel):
    """Traffic the router records for the next job: escalated requests with the teacher's answers, and a sampled
    share of shadow disagreements, as rotated JSONL files. Never on a request's path: records wait in a bounded
    queue for a writer thread; a full queue or a failing sink drops records (counted in
    `kubedistill_router_capture_dropped_total`), and the request is unaffected."""

    model_config = ApiModel.model_config | {
        "json_schema_extra": cel_rules(
            cel("!has(self.maxFileBytes) || !has(self.maxTotalBytes) || self.maxFileBytes <= self.maxTotalBytes",
                "router.capture.maxFileBytes must be at most maxTotalBytes (one file would exceed the folder's cap)",
                ".maxFileBytes"),
            cel("!has(self.s3CredentialsSecret) || self.uri.startsWith('s3://')",
                "router.capture.s3CredentialsSecret is for an s3:// uri", ".s3CredentialsSecret"),
            cel("!has(self.escalated) || self.escalated || !has(self.shadowDisagreementRate) || "
                "self.shadowDisagreementRate > 0.0",
                "router.capture records nothing with escalated false and shadowDisagreementRate 0", ".escalated"),
        )
    }

    uri: str = Field(
        description="Folder the records go to: `pvc://<claim>/<path>` (the operator mounts the claim read-write), "
        "`file:///abs` (a path inside the router's container) or `s3://bucket/prefix` (files are written locally "
        "and uploaded when rotated).",
        pattern=CAPTURE_URI_PATTERN,
    )
    escalated: bool = Field(default=True, description="Record requests the teacher answered after an escalation.")
    shadow_disagreement_rate: float = Field(
        default=1.0, description="Mode shadow: share of the student-teacher disagreements recorded.", ge=0, le=1
    )
    redact: list[str] = Field(
        default_factory=list, max_length=64,
        description="Regular expressions (Python syntax); every match in a captured text or answer is replaced by "
        "`[redacted]` before anything is written.",
    )
    max_file_bytes: int = Field(default=64 * 2**20, description="A file is closed and a new one started above this "
                                "size, bytes.", ge=1024, le=2**40)
    max_total_bytes: int = Field(default=2**30, description="Oldest files are deleted while the folder holds more "
                                 "than this, bytes.", ge=1024, le=2**50)
    retention_hours: float = Field(default=168.0, description="Files older than this are deleted, hours.",
                                   gt=0, le=87600)
    rotate_seconds: int = Field(default=600, description="A file is also closed (and uploaded, for s3://) after "
                                "this many seconds.", ge=1, le=86400)
    queue_size: int = Field(default=1024, description="Records waiting for the writer; beyond it records are "
                            "dropped.", ge=1, le=1_000_000)
    s3_credentials_secret: str | None = Field(
        default=None, description="Secret with AWS credentials for an `s3://` uri (given to the router as env).",
        pattern=DNS_LABEL_PATTERN,
    )

    @field_validator("uri", mode="before")
    @classmethod
    def _uri(cls, value: object) -> object:
        return check_capture_uri(value, "router.capture.uri")

    @field_validator("redact")
    @classmethod
    def _patterns(cls, value: list[str]) -> list[str]:
        compile_patterns(value, "router.capture.redact")
        return value

    @model_validator(mode="after")
    def _records_something(self) -> CaptureSpec:
        if self.max_file_bytes > self.max_total_bytes:
            raise ValueError(f"router.capture.maxFileBytes: {self.max_file_bytes} is above maxTotalBytes "
                             f"({self.max_total_bytes}): one file would exceed the folder's cap; lower it")
        if self.s3_credentials_secret is not None and not self.uri.startswith("s3://"):
            raise ValueError("router.capture.s3CredentialsSecret: is for an s3:// uri; remove it, or capture to "
                             "s3://bucket/prefix")
        if not self.escalated and self.shadow_disagreement_rate == 0:
            raise ValueError("router.capture.escalated: with escalated false and shadowDisagreementRate 0 nothing "
                             "is recorded; enable one, or remove router.capture")
        return self


class RouterSpec(ApiModel):
    """The router sidecar: student first, teacher when the student is not confident."""

    model_config = ApiModel.model_config | {
        "json_schema_extra": cel_rules(
            cel("self.mode != 'shadow' || self.shadowSampleRate > 0.0",
                "mode shadow needs router.shadowSampleRate above 0", ".shadowSampleRate"),
            cel("!has(self.tiers) || self.mode == 'route'", "router.tiers cascade in mode route only", ".tiers"),
            cel("!has(self.tiers) || !has(self.threshold) || self.tiers.all(t, !has(t.threshold) || "
                "t.threshold <= self.threshold)",
                "router.tiers: each tier's threshold must be at most router.threshold (the student's)", ".tiers"),
            cel("!has(self.tiers) || (" + " && ".join(
                f"(size(self.tiers) <= {i} || !has(self.tiers[{i}].threshold) || !has(self.tiers[{i - 1}].threshold)"
                f" || self.tiers[{i}].threshold <= self.tiers[{i - 1}].threshold)"
                for i in range(1, MAX_TIERS)) + ")",  # standard CEL has no pairwise loop: one term per neighbour
                "router.tiers: thresholds must not increase along the tiers", ".tiers"),
            cel("!has(self.tiers) || self.tiers.all(t, t.name != 'student' && t.name != 'teacher')",
                "router.tiers: the names student and teacher are taken", ".tiers"),
            cel("!has(self.capture) || !has(self.mode) || self.mode == 'route' || self.mode == 'shadow'",
                "router.capture records escalations (mode route) and shadow disagreements (mode shadow): the "
                "other modes never record", ".capture"),
        )
    }

    image: str | None = Field(
        default=None, description="Router image; default: the operator's configured router image.", min_length=1
    )
    mode: RouterMode = Field(
        default="route",
        description="`route` escalates below the threshold, `student-only`, `teacher-only`, or `shadow` "
        "(serve the student, compare a sample with the teacher).",
    )
    threshold: float | None = Field(
        default=None,
        description="Escalation threshold on the confidence signal; unset uses the job's recommended one.",
        ge=0, le=1,
    )
    confidence_signal: ConfidenceSignal = Field(default="max-probability",
                                                description="Classification: `max-probability`, `margin` or `entropy`. "
                                                "Generation (causal-lm): `token-quantile`, `min-token-probability` "
                                                "or `mean-logprob`; a classification signal there means the "
                                                "export's own (serving.json).")
    shadow_sample_rate: float = Field(default=0.1, description="Share of traffic mirrored in shadow mode.", ge=0, le=1)
    teacher: TeacherEndpointRef | None = Field(
        default=None, description="Remote teacher; unset escalates to the teacher colocated in Triton."
    )
    tiers: list[RouterTier] | None = Field(
        default=None, description="A tiered cascade (mode route): models between the student and the teacher, in "
        "the order requests climb them, each with its own threshold.", max_length=MAX_TIERS,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )
    auth: RouterAuth | None = Field(
        default=None, description="A bearer token clients must send; unset: no authentication (keep the Service "
        "inside the cluster)."
    )
    max_concurrency: int = Field(default=64, description="Requests in flight before 429.", ge=1, le=100000)
    timeout_seconds: float = Field(default=2.0, description="Timeout of a student call.", gt=0, le=600)
    coalescing: Coalescing = Field(default_factory=Coalescing, description="Requests sharing Triton calls.")
    capture: CaptureSpec | None = Field(
        default=None, description="Record escalated traffic (and shadow disagreements) for the next job's "
        "`dataset.capture`; unset: nothing is recorded."
    )
    resources: ResourceRequirements = Field(default_factory=ResourceRequirements, description="CPU and memory.")

    @model_validator(mode="after")
    def _shadow_rate(self) -> RouterSpec:
        if self.mode == "shadow" and self.shadow_sample_rate <= 0:
            raise ValueError("router.shadowSampleRate: mode shadow needs a sample rate above 0")
        if self.capture is not None and self.mode not in ("route", "shadow"):
            raise ValueError(f"router.capture: records escalations (mode route) and shadow disagreements (mode "
                             f"shadow); mode {self.mode} never records: remove router.capture or change the mode")
        if self.tiers is not None:
            if self.mode != "route":
                raise ValueError(f"router.tiers: tiers cascade in mode route only, not {self.mode}")
            problem = tier_order_problem(self.tiers, self.threshold)
            if problem is not None:
                raise ValueError(problem)
        return self


class ServiceSpec(ApiModel):
    """The Service in front of the router."""

    model_config = ApiModel.model_config | {
        "json_schema_extra": cel_rules(
            cel("!(self.port in [8000, 8001, 8002])",
                "service.port must not be 8000, 8001 or 8002: Triton listens on those in the same pod", ".port"),
        )
    }

    type: ServiceType = Field(default="ClusterIP", description="`ClusterIP`, `NodePort` or `LoadBalancer`.")
    port: int = Field(default=8080, description="Port of the Service (the router listens on it).", ge=1, le=65535)

    @model_validator(mode="after")
    def _port_free(self) -> ServiceSpec:
        if self.port in TRITON_PORTS:
            raise ValueError(
                f"service.port: {self.port} is taken by Triton in the same pod (8000-8002); use e.g. 8080"
            )
        return self


class LiveStatusSpec(ApiModel):
    """What the routers see, in status.live: the operator reads each ready router pod's /metrics at an interval
    (its `--live-status-seconds`) and compares the live figures with the job's evaluation."""

    enabled: bool = Field(
        default=True, description="Read the routers' metrics into status.live and set the conditions "
        "EscalationAboveExpected and AgreementBelowExpected. kopf then keeps its finalizer on the resource (the "
        "operator stops the refresh before deletion completes); false: neither.")
    escalation_margin: float = Field(
        default=0.05, description="EscalationAboveExpected turns True when the live share escalated exceeds the "
        "job's expected share (its frontier at the recommended threshold) by more than this (absolute, 0-1).",
        ge=0, le=1)
    agreement_margin: float = Field(
        default=0.05, description="AgreementBelowExpected turns True when the live shadow agreement falls below the "
        "job's measured agreement by more than this (absolute, 0-1).", ge=0, le=1)
    min_instances: int = Field(
        default=50, description="Fewest routed (or shadow-compared) instances in a refresh window for a condition "
        "to be decided from it; fewer leave it as it was.", ge=1, le=1_000_000)


class StudentDeploymentSpec(ApiModel):
    """Serve a distilled student behind a confidence router."""

    model_config = ApiModel.model_config | {
        "json_schema_extra": cel_rules(
            cel("!has(self.autoscaling) || self.replicas <= self.autoscaling.maxReplicas",
                "replicas must not exceed autoscaling.maxReplicas", ".replicas"),
        )
    }

    source: ModelSource = Field(description="The model to serve.")
    model_name: str | None = Field(
        default=None, description="Name clients use (`/v1/models/<name>`); defaults to the resource's name.",
        pattern=DNS_LABEL_PATTERN, max_length=63,
    )
    replicas: int = Field(default=1, description="Pods (initial count when autoscaling).", ge=0, le=1000)
    autoscaling: AutoscalingSpec | None = Field(default=None, description="Scale on CPU with an HPA.")
    triton: TritonSpec = Field(default_factory=TritonSpec, description="Triton Inference Server.")
    router: RouterSpec = Field(default_factory=RouterSpec, description="The confidence router sidecar.")
    service: ServiceSpec = Field(default_factory=ServiceSpec, description="The Service.")
    live_status: LiveStatusSpec = Field(default_factory=LiveStatusSpec,
                                        description="The routers' live figures in status, and their conditions.")

    @model_validator(mode="after")
    def _replicas_in_bounds(self) -> StudentDeploymentSpec:
        if self.autoscaling and self.replicas > self.autoscaling.max_replicas:
            raise ValueError(
                f"replicas ({self.replicas}) must not exceed autoscaling.maxReplicas ({self.autoscaling.max_replicas})"
            )
        return self


class ServedShare(ApiModel):
    """The instances one model of the cascade answered in the refresh window (the router's
    `kubedistill_router_instances_total{served_by}`; a degraded answer counts for the model that gave it)."""

    served_by: str = Field(description="`student`, a name of router.tiers, or `teacher`.", max_length=63)
    share: float | None = Field(default=None, description="Its share of the instances answered in the window "
                                "(null: none answered).", ge=0, le=1)
    instances_per_second: float | None = Field(default=None, description="Instances it answered per second "
                                               "(null until a router pod has been read twice).", ge=0)


class LiveFigures(ApiModel):
    """What the routers saw in the last refresh window (all ready router pods together)."""

    pods: int | None = Field(default=None, description="Router pods read in this window.", ge=0)
    requests_per_second: float | None = Field(default=None, description="Predict requests per second.", ge=0)
    escalation_share: float | None = Field(default=None, description="Share of routed instances escalated to the "
                                           "teacher (null: none routed in the window).", ge=0, le=1)
    shadow_agreement: float | None = Field(default=None, description="Share of shadow-compared instances where "
                                           "student and teacher agreed (null: none compared).", ge=0, le=1)
    p95_latency_ms: float | None = Field(default=None, description="95th percentile of the router's request "
                                         "latency, milliseconds (from its histogram's buckets).", ge=0)
    teacher_errors_per_second: float | None = Field(default=None, description="Failed teacher calls per second.",
                                                    ge=0)
    served_by: list[ServedShare] | None = Field(
        default=None, description="Who answered the instances, in cascade order: the student, each of router.tiers, "
        "the teacher (then any other name the routers reported).", max_length=MAX_TIERS + 4,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["servedBy"]})
    expected_escalation_share: float | None = Field(default=None, description="The job's frontier at the "
                                                    "recommended threshold (status.results.escalationRate).")
    expected_agreement: float | None = Field(default=None, description="The job's measured agreement "
                                             "(status.results.agreement).")
    unreachable: list[str] | None = Field(default=None, description="Ready router pods whose /metrics could not be "
                                          "read, with why.", max_length=16)


class StudentDeploymentStatus(ApiModel):
    """Observed state of a StudentDeployment."""

    phase: DeploymentPhase | None = Field(default=None, description="Waiting, Progressing, Ready or Degraded.")
    conditions: list[Condition] | None = Field(
        default=None, description="Observed conditions, keyed by type.", json_schema_extra=CONDITIONS_LIST
    )
    observed_generation: int | None = Field(default=None, description="Generation last acted on.", ge=0)
    replicas: int | None = Field(default=None, description="Pods desired.", ge=0)
    ready_replicas: int | None = Field(default=None, description="Pods ready.", ge=0)
    ready: str | None = Field(default=None, description="`ready/desired`, for display.")
    endpoint: str | None = Field(default=None, description="In-cluster URL of the router.")
    model_version: str | None = Field(default=None, description="Version of the model being served.")
    model_repository_uri: str | None = Field(default=None, description="Model repository being served.")
    threshold: float | None = Field(default=None, description="Routing threshold in use.")
    tier_thresholds: dict[str, float] | None = Field(default=None, description="Threshold in use of each of "
                                                     "router.tiers, by name (the spec's, else the job's).")
    deployment_name: str | None = Field(default=None, description="Name of the Deployment.")
    service_name: str | None = Field(default=None, description="Name of the Service.")
    autoscaler_name: str | None = Field(
        default=None, description="Name of the HorizontalPodAutoscaler (while `autoscaling` is set)."
    )
    live: LiveFigures | None = Field(default=None, description="What the routers see (spec.liveStatus).")


class StudentDeployment(ApiModel):
    """A StudentDeployment manifest."""

    api_version: Literal["kubedistill.io/v1alpha1"] = Field(default="kubedistill.io/v1alpha1",
                                                            description="API version.")
    kind: Literal["StudentDeployment"] = Field(default="StudentDeployment", description="Kind.")
    metadata: ObjectMeta = Field(description="Standard object metadata.")
    spec: StudentDeploymentSpec = Field(description="Desired state.")
    status: StudentDeploymentStatus | None = Field(default=None, description="Observed state.")
