"""The environment variables the operator sets on the processes it starts, one model per consumer.

The operator's builders write them with `to_env()`; the process reads them back with `from_env()`. A
variable's name is its field's, upper-cased, after the model's prefix, so neither side retypes it.

- `PipelineEnv`: the pipeline's Ray pods (the RayJob's head and workers).
- `TritonEnv`: a StudentDeployment's fetch init container, which writes `spec.triton` into the fetched
  models' config.pbtxt (`kubedistill_router.triton_settings`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, ClassVar, Literal, Self, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationError


class EnvModel(BaseModel):
    """Fields ↔ `PREFIX + FIELD` variables. Values travel as text: booleans `true`/`false`, tuples
    comma-separated; an unset or empty variable is the field's default."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    prefix: ClassVar[str] = "KUBEDISTILL_"

    @classmethod
    def env_name(cls, field: str) -> str:
        """The variable that carries `field` (KeyError for a field the model does not have)."""
        if field not in cls.model_fields:
            raise KeyError(f"{cls.__name__} has no field {field!r}")
        return cls.prefix + field.upper()

    def to_env(self) -> dict[str, str]:
        """Variable name → value for every field that is set (None and empty tuples are left out)."""
        out = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if value is None or value == ():
                continue
            out[self.env_name(name)] = _encode(value)
        return out

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Self:
        """The model from `env` (default: this process's environment). Raises ValueError naming the variable
        whose value does not fit its field."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        raw: dict[str, str] = {}
        for name, field in cls.model_fields.items():
            text = env.get(cls.env_name(name))
            if not text:
                continue
            raw[name] = text
            values[name] = [p.strip() for p in text.split(",") if p.strip()] if get_origin(field.annotation) is tuple \
                else text
        try:
            return cls(**values)
        except ValidationError as error:
            first = error.errors()[0]
            name = str(first["loc"][0])
            raise ValueError(f"{cls.env_name(name)}={raw.get(name)!r}: {first['msg']}") from None


def _encode(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    return str(value)


class PipelineEnv(EnvModel):
    """What the pipeline reads from the operator: which DistillationJob to report status to, and the run.
    Outside a cluster (`kubedistill run`) all of it is unset, but for the teacher's API key."""

    job_name: str | None = Field(default=None, description="The DistillationJob (KUBEDISTILL_JOB_NAME).")
    job_namespace: str | None = Field(default=None, description="Its namespace (KUBEDISTILL_JOB_NAMESPACE).")
    run_id: str | None = Field(default=None, description="The RayJob running the pipeline (KUBEDISTILL_RUN_ID).")
    # Set by the operator from teacher.endpoint.apiKeySecretRef (a secretKeyRef, never a literal value).
    teacher_api_key: str | None = Field(default=None, repr=False,
                                        description="An endpoint teacher's key (KUBEDISTILL_TEACHER_API_KEY).")


class TritonEnv(EnvModel):
    """A StudentDeployment's `spec.triton`, for the fetch step (None: keep what the job's export wrote)."""

    prefix: ClassVar[str] = "KUBEDISTILL_TRITON_"

    max_batch_size: int | None = Field(default=None, ge=0)
    instance_count: int | None = Field(default=None, ge=0)
    instance_kind: Literal["KIND_CPU", "KIND_GPU"] | None = None
    dynamic_batching: bool | None = None
    max_queue_delay_us: int | None = Field(default=None, ge=0)
    preferred_batch_sizes: tuple[int, ...] = ()
    # vllm: turn the generation models into vLLM models from the files the operator rendered (routerconfig).
    backend: Literal["auto", "vllm"] | None = None
