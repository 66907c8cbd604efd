"""The StudentDeployment resource: "serve that student", with Triton and a confidence router in front."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from kubedistill.api.base import (
    CONDITIONS_LIST,
    DNS_LABEL_PATTERN,
    ApiModel,
    Condition,
    ResourceRequirements,
    SecretKeyRef,
    cel,
    cel_rules,
)
from kubedistill.api.distillationjob import HTTP_URL_PATTERN, MODEL_URI_PATTERN
from kubedistill.api.meta import ObjectMeta

ConfidenceSignal = Literal["max-probability", "margin", "entropy", "token-quantile", "min-token-probability",
                           "mean-logprob"]
RouterMode = Literal["route", "student-only", "teacher-only", "shadow"]
TeacherProtocol = Literal["kserve-v1", "kserve-v2", "openai"]
DeploymentPhase = Literal["Waiting", "Progressing", "Ready", "Degraded"]
ServiceType = Literal["ClusterIP", "NodePort", "LoadBalancer"]

TRITON_IMAGE = "nvcr.io/nvidia/tritonserver:24.10-py3"
# Triton's HTTP, gRPC and metrics ports, taken in every serving pod.
TRITON_PORTS = (8000, 8001, 8002)


class JobReference(ApiModel):
    """A DistillationJob in the same namespace."""

    name: str = Field(description="Name of the DistillationJob.", pattern=DNS_LABEL_PATTERN, max_length=63)


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
        )
    }

    image: str = Field(default=TRITON_IMAGE, description="Triton image (ONNX Runtime backend).", min_length=1)
    resources: ResourceRequirements = Field(default_factory=ResourceRequirements, description="CPU and memory.")
    gpus: int = Field(default=0, description="GPUs (`nvidia.com/gpu`); 0 serves on CPU.", ge=0, le=16)
    max_batch_size: int = Field(default=32, description="Largest batch Triton forms.", ge=1, le=4096)
    dynamic_batching: DynamicBatching = Field(default_factory=DynamicBatching, description="Dynamic batching.")
    instance_count: int = Field(default=1, description="Model instances per replica.", ge=1, le=64)

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


class RouterSpec(ApiModel):
    """The router sidecar: student first, teacher when the student is not confident."""

    model_config = ApiModel.model_config | {
        "json_schema_extra": cel_rules(
            cel("self.mode != 'shadow' || self.shadowSampleRate > 0.0",
                "mode shadow needs router.shadowSampleRate above 0", ".shadowSampleRate"),
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
    auth: RouterAuth | None = Field(
        default=None, description="A bearer token clients must send; unset: no authentication (keep the Service "
        "inside the cluster)."
    )
    max_concurrency: int = Field(default=64, description="Requests in flight before 429.", ge=1, le=100000)
    timeout_seconds: float = Field(default=2.0, description="Timeout of a student call.", gt=0, le=600)
    coalescing: Coalescing = Field(default_factory=Coalescing, description="Requests sharing Triton calls.")
    resources: ResourceRequirements = Field(default_factory=ResourceRequirements, description="CPU and memory.")

    @model_validator(mode="after")
    def _shadow_rate(self) -> RouterSpec:
        if self.mode == "shadow" and self.shadow_sample_rate <= 0:
            raise ValueError("router.shadowSampleRate: mode shadow needs a sample rate above 0")
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

    @model_validator(mode="after")
    def _replicas_in_bounds(self) -> StudentDeploymentSpec:
        if self.autoscaling and self.replicas > self.autoscaling.max_replicas:
            raise ValueError(
                f"replicas ({self.replicas}) must not exceed autoscaling.maxReplicas ({self.autoscaling.max_replicas})"
            )
        return self


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
    deployment_name: str | None = Field(default=None, description="Name of the Deployment.")
    service_name: str | None = Field(default=None, description="Name of the Service.")
    autoscaler_name: str | None = Field(
        default=None, description="Name of the HorizontalPodAutoscaler (while `autoscaling` is set)."
    )


class StudentDeployment(ApiModel):
    """A StudentDeployment manifest."""

    api_version: Literal["kubedistill.io/v1alpha1"] = Field(default="kubedistill.io/v1alpha1",
                                                            description="API version.")
    kind: Literal["StudentDeployment"] = Field(default="StudentDeployment", description="Kind.")
    metadata: ObjectMeta = Field(description="Standard object metadata.")
    spec: StudentDeploymentSpec = Field(description="Desired state.")
    status: StudentDeploymentStatus | None = Field(default=None, description="Observed state.")
