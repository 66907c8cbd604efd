"""Reading manifests into the API models, with errors that name the field and the file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from kubedistill.api.base import API_VERSION
from kubedistill.api.distillationjob import DistillationJob
from kubedistill.api.studentdeployment import StudentDeployment
from kubedistill.errors import InputError

Resource = DistillationJob | StudentDeployment
KINDS: dict[str, type[DistillationJob] | type[StudentDeployment]] = {
    "DistillationJob": DistillationJob,
    "StudentDeployment": StudentDeployment,
}


class ManifestError(InputError):
    """A manifest that cannot be used; the message names the file, the field and the fix."""


def _field_path(loc: tuple[Any, ...]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif str(part).startswith(("function-", "model-")):  # pydantic's internal validator frames
            continue
        else:
            path += ("." if path else "") + str(part)
    return path


def describe_validation_error(error: ValidationError, source: str) -> str:
    """One line per problem: `source: field.path: message`."""
    lines = []
    for problem in error.errors():
        field = _field_path(tuple(problem["loc"]))
        message = problem["msg"].removeprefix("Value error, ")
        if problem["type"] == "extra_forbidden":
            message = "unknown field (check its spelling against `kubectl explain`)"
        lines.append(f"{source}: {field}: {message}" if field else f"{source}: {message}")
    return "\n".join(lines)


def parse_resource(document: dict[str, Any], source: str = "<manifest>") -> Resource:
    """Validate one parsed YAML document as a DistillationJob or a StudentDeployment."""
    if not isinstance(document, dict):
        raise ManifestError(f"{source}: expected a mapping with apiVersion, kind, metadata and spec")
    kind = document.get("kind")
    if kind not in KINDS:
        raise ManifestError(f"{source}: kind: expected one of {', '.join(KINDS)}, got {kind!r}")
    if document.get("apiVersion") != API_VERSION:
        raise ManifestError(f"{source}: apiVersion: expected {API_VERSION!r}, got {document.get('apiVersion')!r}")
    try:
        return KINDS[kind].model_validate(document)
    except ValidationError as error:
        raise ManifestError(describe_validation_error(error, source)) from None


def load_manifests(path: str | Path) -> list[Resource]:
    """Every kubedistill resource in a YAML file (multi-document streams allowed; other kinds skipped)."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path}: no such file")
    try:
        documents = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    except yaml.YAMLError as error:
        raise ManifestError(f"{path}: not valid YAML: {error}") from None
    resources = [
        parse_resource(d, f"{path}#{i}" if len(documents) > 1 else str(path))
        for i, d in enumerate(documents)
        if not isinstance(d, dict) or d.get("apiVersion", "").startswith("kubedistill.io/")
    ]
    return resources


def load_manifest(path: str | Path, kind: type[Resource]) -> Any:
    """The one resource of `kind` in a file; an error when there is none or more than one."""
    found = [r for r in load_manifests(path) if isinstance(r, kind)]
    if len(found) != 1:
        raise ManifestError(f"{path}: expected exactly one {kind.__name__}, found {len(found)}")
    return found[0]
