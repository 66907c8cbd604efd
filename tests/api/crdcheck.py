"""Checking a manifest the way the API server would: apply the CRD's structural defaults, validate the
OpenAPI schema (Draft 4: the CRDs use boolean exclusiveMinimum) and evaluate every CEL rule
(`x-kubernetes-validations`, with cel-python) on the defaulted object. Loaded by conftest.py as
`kubedistill_crdcheck`."""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any

import celpy
import jsonschema
import yaml

ROOT = Path(__file__).resolve().parents[2]
CRDS = {"DistillationJob": ROOT / "crds" / "distillationjobs.yaml",
        "StudentDeployment": ROOT / "crds" / "studentdeployments.yaml"}


@functools.cache
def schema(kind: str) -> dict[str, Any]:
    crd = yaml.safe_load(CRDS[kind].read_text())
    (version,) = crd["spec"]["versions"]
    return version["schema"]["openAPIV3Schema"]


def apply_defaults(obj: Any, node: dict[str, Any]) -> Any:
    """Structural defaulting: a null is pruned unless the field is nullable, then a missing property with a
    default gets it, then defaults apply inside it."""
    if isinstance(obj, dict) and node.get("type") == "object":
        for name, prop in (node.get("properties") or {}).items():
            if name in obj and obj[name] is None and not prop.get("nullable"):
                del obj[name]
            if name not in obj and "default" in prop:
                obj[name] = copy.deepcopy(prop["default"])
            if name in obj:
                obj[name] = apply_defaults(obj[name], prop)
        extra = node.get("additionalProperties")
        if isinstance(extra, dict):
            for key in obj:
                obj[key] = apply_defaults(obj[key], extra)
    elif isinstance(obj, list) and isinstance(node.get("items"), dict):
        return [apply_defaults(item, node["items"]) for item in obj]
    return obj


def _to_cel(obj: Any, node: dict[str, Any]) -> Any:
    """JSON to CEL values, typed by the schema (a `number` is a double even when written as 2)."""
    if node.get("type") == "number" and isinstance(obj, int | float) and not isinstance(obj, bool):
        return celpy.celtypes.DoubleType(float(obj))
    if isinstance(obj, dict):
        props = node.get("properties") or {}
        extra = node.get("additionalProperties") if isinstance(node.get("additionalProperties"), dict) else {}
        return celpy.celtypes.MapType({celpy.celtypes.StringType(k): _to_cel(v, props.get(k, extra))
                                       for k, v in obj.items()})
    if isinstance(obj, list):
        return celpy.celtypes.ListType([_to_cel(v, node.get("items") or {}) for v in obj])
    return celpy.json_to_cel(obj)


@functools.cache
def _program(rule: str) -> Any:
    env = celpy.Environment()
    return env.program(env.compile(rule))


def cel_errors(obj: Any, node: dict[str, Any], path: str = "") -> list[str]:
    """`path: message` for every CEL rule that does not hold (rules run where their value is present)."""
    errors: list[str] = []
    if obj is None:
        return errors
    for rule in node.get("x-kubernetes-validations") or []:
        result = _program(rule["rule"]).evaluate({"self": _to_cel(obj, node)})
        if result is not True and result != celpy.celtypes.BoolType(True):
            errors.append(f"{(path + rule.get('fieldPath', '')).lstrip('.')}: {rule['message']}")
    if isinstance(obj, dict):
        for name, prop in (node.get("properties") or {}).items():
            if name in obj:
                errors += cel_errors(obj[name], prop, f"{path}.{name}")
    elif isinstance(obj, list) and isinstance(node.get("items"), dict):
        for i, item in enumerate(obj):
            errors += cel_errors(item, node["items"], f"{path}[{i}]")
    return errors


def _strict(node: Any) -> Any:
    """`kubectl apply`'s default strict field validation: an unknown field is an error, not pruned."""
    if isinstance(node, list):
        return [_strict(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: _strict(v) for k, v in node.items()}
    if "properties" in out and "additionalProperties" not in out:
        out["additionalProperties"] = False
    if out.pop("nullable", False) and "type" in out:  # OpenAPI's nullable in Draft 4 terms
        out["type"] = [out["type"], "null"]
    return out


@functools.cache
def _validator(kind: str) -> jsonschema.Draft4Validator:
    root = copy.deepcopy(schema(kind))
    for part in ("spec", "status"):
        root["properties"][part] = _strict(root["properties"][part])
    return jsonschema.Draft4Validator(root)


def schema_errors(obj: dict[str, Any]) -> list[str]:
    """Every refusal the API server would give this manifest: schema first, then CEL on the defaulted object."""
    root = schema(obj["kind"])
    defaulted = apply_defaults(copy.deepcopy(obj), root)
    validator = _validator(obj["kind"])
    errors = [f"{'.'.join(str(p) for p in e.absolute_path)}: {e.message}"
              for e in sorted(validator.iter_errors(defaulted), key=lambda e: list(e.absolute_path))]
    if errors:
        return errors
    return cel_errors(defaulted, root)
