"""Generate the CustomResourceDefinitions in `crds/` from the API models.

    python -m kubedistill.api.crdgen            # rewrite crds/ and charts/kubedistill/crds/
    python -m kubedistill.api.crdgen --check    # fail when either is out of date

Pydantic's JSON Schema becomes a Kubernetes *structural* schema: `$ref`s inlined, optional fields
as plain non-required properties, `exclusiveMinimum` in OpenAPI v3.0's boolean form, titles dropped,
and `default: {}` on nested objects so the API server fills their defaults too.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from kubedistill.api.base import GROUP, VERSION
from kubedistill.api.distillationjob import DistillationJobSpec, DistillationJobStatus
from kubedistill.api.meta import MAX_NAME_LENGTH
from kubedistill.api.studentdeployment import StudentDeploymentSpec, StudentDeploymentStatus

ROOT = Path(__file__).resolve().parents[2]
CRD_DIR = ROOT / "crds"
# The Helm chart ships the same files (Helm installs a chart's crds/ before its templates).
CHART_CRD_DIR = ROOT / "charts" / "kubedistill" / "crds"
CATEGORY = "kubedistill"

_DROP = {"title", "discriminator"}


def _inline(node: Any, defs: dict[str, Any]) -> Any:
    """Resolve `$ref`s and rewrite JSON Schema constructs into their structural-schema form."""
    if isinstance(node, list):
        return [_inline(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = _inline(defs[node["$ref"].rsplit("/", 1)[-1]], defs)
        overrides = {k: v for k, v in node.items() if k != "$ref"}
        return {**target, **_inline(overrides, defs)}
    any_of = node.get("anyOf")
    if any_of is not None:
        options = [o for o in any_of if o.get("type") != "null"]
        if len(options) != 1:
            raise ValueError(f"union types have no structural form: {any_of}")
        rest = {k: v for k, v in node.items() if k != "anyOf"}
        merged = {**_inline(options[0], defs), **_inline(rest, defs)}
        if len(options) < len(any_of) and merged.get("default") is not None:
            # null means something here ("unlabelled", "no gate"): without `nullable` the API server would
            # prune it and put the default back.
            merged["nullable"] = True
        return merged
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROP or key == "$defs":
            continue
        if key == "const":
            out["enum"] = [value]
        elif key in ("exclusiveMinimum", "exclusiveMaximum"):
            out["minimum" if key == "exclusiveMinimum" else "maximum"] = value
            out[key] = True
        elif key == "properties":
            out[key] = {name: _inline(prop, defs) for name, prop in value.items()}
        else:
            out[key] = _inline(value, defs)
    if out.get("default") is None:
        out.pop("default", None)
    if out.get("additionalProperties") is False:  # structural schemas prune unknown fields instead
        del out["additionalProperties"]
    if out.get("additionalProperties") is True:
        del out["additionalProperties"]
        out["x-kubernetes-preserve-unknown-fields"] = True
    return out


def _add_object_defaults(schema: dict[str, Any], model: type[BaseModel]) -> None:
    """`default: {}` for nested objects built by a default factory, recursively, so defaults apply in depth."""
    for name, field in model.model_fields.items():
        alias = field.alias or name
        prop = schema.get("properties", {}).get(alias)
        if prop is None:
            continue
        annotation = field.annotation
        nested = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
        if field.default_factory is not None:
            value = field.default_factory()  # type: ignore[call-arg]
            prop["default"] = {} if isinstance(value, BaseModel) else value
        if nested is not None:
            _add_object_defaults(prop, nested)
        for arg in getattr(annotation, "__args__", ()):  # Optional[Model]
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                _add_object_defaults(prop, arg)
        item_type = prop.get("items")
        if item_type is not None:
            for arg in getattr(annotation, "__args__", ()):
                for inner in getattr(arg, "__args__", ()) or (arg,):
                    if isinstance(inner, type) and issubclass(inner, BaseModel):
                        _add_object_defaults(item_type, inner)


def structural_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The OpenAPI v3 structural schema of one model, as a CRD embeds it."""
    raw = model.model_json_schema(by_alias=True, mode="validation")
    schema = _inline(raw, raw.get("$defs", {}))
    _add_object_defaults(schema, model)
    return schema


def _crd(kind: str, plural: str, short: str, spec: type[BaseModel], status: type[BaseModel],
         columns: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{plural}.{GROUP}",
            "labels": {"app.kubernetes.io/name": "kubedistill", "app.kubernetes.io/part-of": "kubedistill"},
        },
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": kind.lower(),
                "shortNames": [short],
                "categories": [CATEGORY, "all"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": columns,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": spec.__doc__.strip().splitlines()[0] if spec.__doc__ else kind,
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {"type": "string", "description": "API version of the object."},
                                "kind": {"type": "string", "description": "Kind of the object."},
                                "metadata": {
                                    "type": "object",
                                    "properties": {
                                        "name": {
                                            "type": "string",
                                            "maxLength": MAX_NAME_LENGTH,
                                            "description": f"At most {MAX_NAME_LENGTH} characters: child "
                                            "objects are named after it.",
                                        }
                                    },
                                },
                                "spec": structural_schema(spec),
                                "status": structural_schema(status),
                            },
                        }
                    },
                }
            ],
        },
    }


def _age() -> dict[str, Any]:
    return {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}


def build_crds() -> dict[str, dict[str, Any]]:
    """File name → CRD, for both resources."""
    return {
        "distillationjobs.yaml": _crd(
            "DistillationJob", "distillationjobs", "dj", DistillationJobSpec, DistillationJobStatus,
            [
                {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
                {"name": "Stage", "type": "string", "jsonPath": ".status.progress.stage", "priority": 1},
                {"name": "Progress", "type": "number", "jsonPath": ".status.progress.percent", "priority": 1},
                {"name": "Retention", "type": "number", "jsonPath": ".status.results.retention"},
                {"name": "CostRatio", "type": "number", "jsonPath": ".status.results.costRatio"},
                {"name": "RayJob", "type": "string", "jsonPath": ".status.rayJobName"},
                _age(),
            ],
        ),
        "studentdeployments.yaml": _crd(
            "StudentDeployment", "studentdeployments", "sd", StudentDeploymentSpec, StudentDeploymentStatus,
            [
                {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
                {"name": "Ready", "type": "string", "jsonPath": ".status.ready"},
                {"name": "Endpoint", "type": "string", "jsonPath": ".status.endpoint"},
                {"name": "Escalated", "type": "number", "jsonPath": ".status.live.escalationShare"},
                {"name": "Threshold", "type": "number", "jsonPath": ".status.threshold", "priority": 1},
                {"name": "Version", "type": "string", "jsonPath": ".status.modelVersion", "priority": 1},
                _age(),
            ],
        ),
    }


HEADER = "# Generated from kubedistill/api by `python -m kubedistill.api.crdgen`; do not edit.\n"


def render(crd: dict[str, Any]) -> str:
    return HEADER + yaml.safe_dump(crd, sort_keys=False, allow_unicode=True, width=120)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="fail when crds/ differs from the models")
    parser.add_argument("--out", type=Path, action="append",
                        help="folder to write (repeatable; default: crds/ and the chart's crds/)")
    args = parser.parse_args(argv)
    stale = []
    for folder, (name, crd) in ((f, item) for f in args.out or [CRD_DIR, CHART_CRD_DIR]
                                for item in build_crds().items()):
        path = folder / name
        text = render(crd)
        if args.check:
            if not path.is_file() or path.read_text() != text:
                stale.append(str(path))
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    if stale:
        print(f"out of date (run python -m kubedistill.api.crdgen): {', '.join(stale)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
