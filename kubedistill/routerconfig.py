"""The router sidecar's configuration: built by the operator (into a ConfigMap) and by `kubedistill serve`,
read by the router. One definition, so the two can never drift."""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field

from kubedistill.api.studentdeployment import (
    CaptureSpec,
    ConfidenceSignal,
    RouterMode,
    RouterTier,
    StudentDeploymentSpec,
    TeacherEndpointRef,
)

ROUTER_CONFIG_FILE = "router.yaml"
ROUTER_CONFIG_DIR = "/etc/kubedistill"
MODEL_REPOSITORY_DIR = "/models"
TEACHER_API_KEY_FILE = "/var/run/secrets/kubedistill/teacher/api-key"
# The router's own bearer token (router.auth.apiKeySecretRef), from the Secret into the router's environment.
ROUTER_API_KEY_ENV = "KUBEDISTILL_ROUTER_API_KEY"
# `triton.backend: vllm`: the operator renders the vLLM models' config.pbtxt and each model's engine arguments
# (model.json) into the router's ConfigMap; the fetch init container reads them there and writes them into the
# fetched repository. A model without its file is not served (a colocated teacher the router never calls).
VLLM_CONFIG_FILE = "vllm-config.pbtxt"


def vllm_engine_args_file(model: str) -> str:
    """The ConfigMap key holding the vLLM engine arguments (model.json) of the Triton model `model`."""
    return f"vllm-{model}.json"


class RouterConfig(BaseModel):
    """Everything the router reads at start-up."""

    model_config = ConfigDict(extra="forbid")

    model_name: str = Field(description="Name clients use: /v1/models/<model_name>.")
    model_repository: str = Field(default=MODEL_REPOSITORY_DIR,
                                  description="Local folder of the model repository (serving.json, tokenizer).")
    port: int = Field(default=8080, ge=1, le=65535)
    triton_url: str = Field(default="localhost:8001", description="Triton's address (host:port).")
    triton_protocol: str = Field(default="grpc", pattern="^(grpc|http)$")
    mode: RouterMode = "route"
    threshold: float | None = Field(default=None, ge=0, le=1,
                                    description="None uses serving.json's recommended threshold.")
    confidence_signal: ConfidenceSignal = "max-probability"
    shadow_sample_rate: float = Field(default=0.1, ge=0, le=1)
    teacher: TeacherEndpointRef | None = Field(default=None, description="Remote teacher; None: colocated in Triton.")
    tiers: list[RouterTier] | None = Field(default=None, description="Models between the student and the teacher "
                                           "(mode route), in cascade order.")
    teacher_api_key_file: str | None = Field(default=None, description="Mounted Secret file with the teacher's key.")
    require_api_key: bool = Field(default=False, description=f"Model endpoints need `Authorization: Bearer` with "
                                  f"the token in ${ROUTER_API_KEY_ENV} (never in this file).")
    max_concurrency: int = Field(default=64, ge=1)
    coalesce: bool = Field(default=True, description="Concurrent requests share Triton calls (see RouterSpec).")
    max_calls_in_flight: int | None = Field(default=None, ge=1,
                                            description="Triton calls per model at once; None: twice its instances.")
    timeout_seconds: float = Field(default=2.0, gt=0)
    max_instances: int = Field(default=256, ge=1, description="Instances per request before 400.")
    max_body_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    max_tokens: int = Field(default=1024, ge=1, description="Generation: the cap on a request's max_tokens "
                            "(over it: 400).")
    capture: CaptureSpec | None = Field(default=None, description="Where escalated traffic is recorded; None: "
                                        "nowhere.")

    @classmethod
    def from_spec(cls, name: str, spec: StudentDeploymentSpec, threshold: float | None = None,
                  tiers: list[RouterTier] | None = None) -> RouterConfig:
        """The config a StudentDeployment's router runs with (threshold, tiers: the resolved ones, if known; the
        router fills a tier threshold still unset from serving.json)."""
        router = spec.router
        return cls(
            model_name=spec.model_name or name,
            port=spec.service.port,
            mode=router.mode,
            threshold=router.threshold if router.threshold is not None else threshold,
            confidence_signal=router.confidence_signal,
            shadow_sample_rate=router.shadow_sample_rate,
            teacher=router.teacher,
            tiers=tiers if tiers is not None else router.tiers,
            teacher_api_key_file=TEACHER_API_KEY_FILE if router.teacher and router.teacher.api_key_secret_ref else None,
            require_api_key=router.auth is not None,
            max_concurrency=router.max_concurrency,
            coalesce=router.coalescing.enabled,
            max_calls_in_flight=router.coalescing.max_calls_in_flight,
            timeout_seconds=router.timeout_seconds,
            max_instances=spec.triton.max_batch_size * 8,
            capture=router.capture,
        )

    def to_yaml(self) -> str:
        # `require_api_key: false` is left out: the text is hashed into the pod template, and a deployment without
        # auth must not roll its pods when an operator that knows the field takes over.
        drop = None if self.require_api_key else {"require_api_key"}
        return yaml.safe_dump(self.model_dump(mode="json", exclude_none=True, exclude=drop), sort_keys=False)

    @classmethod
    def read(cls, path: str | Path) -> RouterConfig:
        return cls.model_validate(yaml.safe_load(Path(path).read_text()))
