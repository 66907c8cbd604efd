"""Shared building blocks of the API models: camelCase fields, CEL rules, common Kubernetes shapes."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

GROUP = "kubedistill.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

# A Kubernetes resource quantity ("500m", "2", "4Gi"), as the API server's own pattern accepts it.
QUANTITY_PATTERN = r"^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$"
# A DNS-1123 label: the names of Secrets, Services and jobs this API refers to.
DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"

# Where captured traffic goes (router.capture) and is read back from (dataset.capture): a folder on a volume
# (file://, pvc://) or object storage (s3://).
CAPTURE_URI_PATTERN = r"^(file:///|pvc://[a-z0-9]([-a-z0-9]*[a-z0-9])?/|s3://)\S+$|^/\S+$"


def check_capture_uri(value: object, field: str) -> object:
    """A capture URI names a folder: file://, pvc://, s3:// or an absolute path (ValueError naming `field`)."""
    if isinstance(value, str) and not re.match(CAPTURE_URI_PATTERN, value):
        raise ValueError(f"{field}: {value!r} is not a folder of captured traffic; use file:///abs (an absolute "
                         "path), pvc://<claim>/<path> (in a cluster) or s3://bucket/prefix")
    return value


def cel(rule: str, message: str, field_path: str | None = None) -> dict[str, str]:
    """One `x-kubernetes-validations` entry: a CEL rule the API server evaluates on every write."""
    entry = {"rule": rule, "message": message}
    if field_path:
        entry["fieldPath"] = field_path
    return entry


def cel_rules(*rules: dict[str, str]) -> dict[str, Any]:
    """`json_schema_extra` for a model whose object carries cross-field CEL rules."""
    return {"x-kubernetes-validations": list(rules)}


class ApiModel(BaseModel):
    """Base of every API object: camelCase on the wire, unknown fields refused (typos fail loudly)."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        validate_assignment=True,
    )

    def to_wire(self) -> dict[str, Any]:
        """The object as it appears in YAML and in the API server: camelCase, defaults filled, no nulls but
        those that override a default (`minRetention: null` disables the gate; dropped, it would read back
        as the default)."""
        return _without_default_nulls(self, self.model_dump(mode="json", by_alias=True))


def _without_default_nulls(value: Any, dumped: Any) -> Any:
    """`dumped` (the JSON dump of `value`) without the nulls that reading it back would not need."""
    if isinstance(value, BaseModel):
        wire: dict[str, Any] = {}
        for name, field in type(value).model_fields.items():
            key = field.serialization_alias or field.alias or name
            if key not in dumped:
                continue
            item = getattr(value, name)
            if item is None:
                if field.get_default(call_default_factory=True) is not None:
                    wire[key] = None
                continue
            wire[key] = _without_default_nulls(item, dumped[key])
        for key, item in (value.model_extra or {}).items():  # fields a model allows beyond its own
            if key in dumped and item is not None:
                wire[key] = dumped[key]
        return wire
    if isinstance(value, list | tuple):
        return [_without_default_nulls(v, d) for v, d in zip(value, dumped, strict=True)]
    if isinstance(value, dict):
        return {k: _without_default_nulls(v, d) for (k, d), v in zip(dumped.items(), value.values(), strict=True)
                if v is not None}
    return dumped


class SecretKeyRef(ApiModel):
    """A key in a Secret of the resource's own namespace."""

    name: str = Field(description="Name of the Secret.", pattern=DNS_SUBDOMAIN_PATTERN, max_length=253)
    key: str = Field(description="Key inside the Secret whose value is used.", min_length=1, max_length=253)


class ComputeResources(ApiModel):
    """CPU and memory of a container, as Kubernetes quantities."""

    cpu: str | None = Field(default=None, description="CPU, e.g. `2` or `500m`.", pattern=QUANTITY_PATTERN)
    memory: str | None = Field(default=None, description="Memory, e.g. `4Gi`.", pattern=QUANTITY_PATTERN)


class ResourceRequirements(ApiModel):
    """Requests and limits of a container (GPUs are asked for separately, with `gpus`)."""

    requests: ComputeResources = Field(
        default_factory=ComputeResources, description="Resources the scheduler reserves."
    )
    limits: ComputeResources = Field(default_factory=ComputeResources, description="Upper bounds enforced at run time.")


class Toleration(ApiModel):
    """A Kubernetes toleration, so that pods can run on tainted (for example GPU) nodes."""

    key: str | None = Field(default=None, description="Taint key the toleration applies to; empty matches all keys.")
    operator: Literal["Exists", "Equal"] | None = Field(default=None, description="`Exists` or `Equal` (default).")
    value: str | None = Field(default=None, description="Taint value the toleration matches (with `Equal`).")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        default=None, description="Taint effect to match; empty matches all effects."
    )
    toleration_seconds: int | None = Field(
        default=None, description="How long a `NoExecute` taint is tolerated before eviction.", ge=0
    )


# Conditions are a list keyed by `type`, so that server-side apply and patches merge them by type.
CONDITIONS_LIST: dict[str, Any] = {"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]}

ConditionStatus = Literal["True", "False", "Unknown"]


class JobReference(ApiModel):
    """A DistillationJob in the same namespace."""

    name: str = Field(description="Name of the DistillationJob.", pattern=DNS_LABEL_PATTERN, max_length=63)


class Condition(ApiModel):
    """A Kubernetes-style condition: one observed aspect of the resource's state."""

    type: str = Field(description="Condition type, CamelCase (e.g. `Ready`, `Succeeded`).", max_length=316)
    status: ConditionStatus = Field(description="`True`, `False` or `Unknown`.")
    reason: str = Field(description="One CamelCase word: why the condition is in this state.", max_length=1024)
    message: str = Field(default="", description="A human-readable explanation.", max_length=32768)
    last_transition_time: datetime | None = Field(
        default=None, description="When the condition last changed status."
    )
    observed_generation: int | None = Field(
        default=None, description="The `metadata.generation` the condition was computed for.", ge=0
    )
