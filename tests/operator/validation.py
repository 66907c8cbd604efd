"""Validating what the operator writes against the real schemas: Kubernetes' OpenAPI (kubernetes-validate)
and KubeRay v1.7.0's own RayJob CRD (../shared/schemas/kuberay/). Loaded by conftest.py as
`kubedistill_validation`."""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parents[2]
KUBERAY_SCHEMAS = [ROOT.parent / "shared" / "schemas" / "kuberay", Path("/work/shared/schemas/kuberay")]
K8S_VERSION = kubernetes_validate.latest_version()


def _strict(schema: Any) -> Any:
    """Refuse unknown fields where the API server would silently prune them (a typo would vanish)."""
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _strict(v) for k, v in schema.items()}
    if "properties" in out and "additionalProperties" not in out \
            and not out.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out


@functools.cache
def ray_job_validator() -> jsonschema.Draft4Validator:
    folder = next(p for p in KUBERAY_SCHEMAS if (p / "ray.io_rayjobs.yaml").is_file())
    crd = yaml.safe_load((folder / "ray.io_rayjobs.yaml").read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    schema = _strict(copy.deepcopy(version["schema"]["openAPIV3Schema"]))
    return jsonschema.Draft4Validator(schema)


def validate_ray_job(obj: dict[str, Any]) -> None:
    errors = sorted(ray_job_validator().iter_errors(obj), key=lambda e: list(e.absolute_path))
    if errors:
        raise AssertionError("; ".join(f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in errors[:5]))


def _pod_template_objects(obj: dict[str, Any]) -> list[dict[str, Any]]:
    """A RayJob's pod templates as core/v1 PodTemplates, so Kubernetes' own schema checks them too."""
    cluster = obj["spec"]["rayClusterSpec"]
    templates = [cluster["headGroupSpec"]["template"]] + [g["template"] for g in cluster["workerGroupSpecs"]]
    return [{"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": f"t{i}"}, "template": t}
            for i, t in enumerate(templates)]


def validate_object(obj: dict[str, Any]) -> None:
    """Any object the operator creates: strict Kubernetes schema, or KubeRay's CRD for a RayJob."""
    if obj["apiVersion"] == "ray.io/v1":
        validate_ray_job(obj)
        for template in _pod_template_objects(obj):
            kubernetes_validate.validate(template, K8S_VERSION, strict=True)
        return
    kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
