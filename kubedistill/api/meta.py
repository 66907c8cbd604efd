"""The part of Kubernetes object metadata the resources use."""

from __future__ import annotations

from pydantic import ConfigDict, Field

from kubedistill.api.base import DNS_LABEL_PATTERN, ApiModel

# Child objects are named `<name>-<suffix>` (RayJob, ConfigMap, Deployment, Service, ...), and KubeRay
# derives RayCluster and pod names from the RayJob's: 40 characters leaves room for every suffix.
MAX_NAME_LENGTH = 40


class ObjectMeta(ApiModel):
    """Name, namespace, labels and annotations; other server-set fields are kept as they are."""

    model_config = ApiModel.model_config | ConfigDict(extra="allow")

    name: str = Field(
        description="Object name; child objects are named after it.",
        pattern=DNS_LABEL_PATTERN,
        max_length=MAX_NAME_LENGTH,
    )
    namespace: str | None = Field(default=None, description="Namespace.", pattern=DNS_LABEL_PATTERN, max_length=63)
    labels: dict[str, str] | None = Field(default=None, description="Labels.")
    annotations: dict[str, str] | None = Field(default=None, description="Annotations.")
    uid: str | None = Field(default=None, description="Server-assigned unique id.")
    generation: int | None = Field(default=None, description="Server-assigned spec generation.")
