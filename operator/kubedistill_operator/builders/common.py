"""Pieces shared by the builders: metadata, resources, hardened security contexts."""

from __future__ import annotations

from typing import Any

from kubedistill.api.base import ResourceRequirements
from kubedistill_operator import naming

GPU_RESOURCE = "nvidia.com/gpu"
# Images of Ray, Triton and the router all run as an unprivileged uid 1000.
RUN_AS_USER = 1000


def metadata(name: str, namespace: str | None, instance: str, component: str, owner_kind: str,
             owner_uid: str | None) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": name,
        "labels": naming.labels(instance, component),
        "ownerReferences": [naming.owner_reference(owner_kind, instance, owner_uid)],
    }
    if namespace:
        meta["namespace"] = namespace
    return meta


def resources(spec: ResourceRequirements, gpus: int = 0) -> dict[str, Any]:
    """Container resources; GPUs go in limits (and requests, which must equal them for extended resources)."""
    out: dict[str, dict[str, str]] = {}
    for section in ("requests", "limits"):
        values = getattr(spec, section).model_dump(exclude_none=True)
        if gpus > 0:
            values[GPU_RESOURCE] = str(gpus)
        if values:
            out[section] = values
    return out


def pod_security_context() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS_USER,
        "runAsGroup": RUN_AS_USER,
        "fsGroup": RUN_AS_USER,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security_context(read_only_root: bool = True) -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "readOnlyRootFilesystem": read_only_root,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def image_pull_secrets(names: tuple[str, ...]) -> list[dict[str, str]]:
    return [{"name": n} for n in names]


def pvc_volume(claim: str, read_only: bool, index: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """A claim as a volume and its mount at /mnt/pvc/<claim> (the path `kubedistill.uris` resolves to).

    Volumes are numbered: a claim name may hold dots, which volume names may not."""
    volume_name = f"pvc-{index}"
    volume = {"name": volume_name, "persistentVolumeClaim": {"claimName": claim, "readOnly": read_only}}
    mount = {"name": volume_name, "mountPath": f"/mnt/pvc/{claim}", "readOnly": read_only}
    return volume, mount


def env_list(env: dict[str, str]) -> list[dict[str, str]]:
    """A container's `env` from name → value (the `to_env()` of a `kubedistill.env` model)."""
    return [{"name": name, "value": value} for name, value in env.items()]
