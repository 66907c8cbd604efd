"""Names and labels of everything the operator creates: deterministic, derived from the parent's name."""

from __future__ import annotations

from typing import Any

from kubedistill.api import API_VERSION, GROUP

NAME_LABEL = "app.kubernetes.io/name"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
INSTANCE_LABEL = "app.kubernetes.io/instance"
COMPONENT_LABEL = "app.kubernetes.io/component"
PART_OF = "kubedistill"
MANAGER = "kubedistill-operator"

PIPELINE = "pipeline"
ROUTER = "router"

# Annotations in the project's own API group.
MODEL_VERSION_ANNOTATION = f"{GROUP}/model-version"
CONFIG_HASH_ANNOTATION = f"{GROUP}/router-config-hash"
GENERATION_ANNOTATION = f"{GROUP}/job-generation"
# kopf's record of the spec it last handled (settings.persistence.diffbase_storage), written after a creation's
# handlers succeeded.
LAST_HANDLED_ANNOTATION_KEY = "last-handled-configuration"
LAST_HANDLED_ANNOTATION = f"{GROUP}/{LAST_HANDLED_ANNOTATION_KEY}"


def labels(instance: str, component: str) -> dict[str, str]:
    """The labels on every object the operator creates."""
    return {
        NAME_LABEL: PART_OF,
        MANAGED_BY_LABEL: MANAGER,
        INSTANCE_LABEL: instance,
        COMPONENT_LABEL: component,
    }


def selector(instance: str, component: str) -> dict[str, str]:
    """A stable pod selector (immutable on a Deployment): no version-dependent labels in it."""
    return {NAME_LABEL: PART_OF, INSTANCE_LABEL: instance, COMPONENT_LABEL: component}


def owner_reference(kind: str, name: str, uid: str | None) -> dict[str, Any]:
    """The owner reference that makes the API server garbage-collect a child with its parent."""
    return {
        "apiVersion": API_VERSION,
        "kind": kind,
        "name": name,
        "uid": uid or "",
        "controller": True,
        "blockOwnerDeletion": True,
    }


# DistillationJob children.
def spec_config_map_name(job: str) -> str:
    return f"{job}-spec"


def pipeline_account_name(job: str) -> str:
    return f"{job}-pipeline"


def ray_job_name(job: str, generation: int | None) -> str:
    """One RayJob per spec generation: a spec change starts a new run, a restart finds the same name."""
    return f"{job}-g{generation or 1}"


# StudentDeployment children.
def router_config_map_name(sd: str) -> str:
    return f"{sd}-router"


def deployment_name(sd: str) -> str:
    return sd


def service_name(sd: str) -> str:
    return sd


def hpa_name(sd: str) -> str:
    return sd


def endpoint(sd: str, namespace: str, port: int) -> str:
    return f"http://{service_name(sd)}.{namespace}.svc.cluster.local:{port}"
