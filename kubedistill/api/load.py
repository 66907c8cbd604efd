"""Reading manifests into the API models, with errors that name the field and the file."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
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


MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")  # what `kubectl apply -f FOLDER` reads


@dataclass
class Manifests:
    """The kubedistill resources found, and how many documents of other kinds were skipped (by kind)."""

    resources: list[Resource] = field(default_factory=list)
    skipped: Counter[str] = field(default_factory=Counter)

    def extend(self, other: Manifests) -> None:
        self.resources.extend(other.resources)
        self.skipped.update(other.skipped)


def manifest_files(path: str | Path, recursive: bool = False) -> list[Path]:
    """`path` itself when it is a file; for a folder, its .yaml, .yml and .json files in name order (with
    `recursive`, its subfolders' too), as `kubectl apply -f` reads a folder."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise ManifestError(f"{path}: no such file or folder")
    found = path.rglob("*") if recursive else path.iterdir()
    return sorted(p for p in found if p.is_file() and p.suffix in MANIFEST_SUFFIXES)


def parse_manifests(text: str, source: str) -> Manifests:
    """Every kubedistill resource in a YAML stream (multi-document allowed); other kinds are counted, not parsed."""
    try:
        documents = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as error:
        raise ManifestError(f"{source}: not valid YAML: {error}") from None
    found = Manifests()
    for i, document in enumerate(documents):
        if isinstance(document, dict) and not str(document.get("apiVersion", "")).startswith("kubedistill.io/"):
            found.skipped[str(document.get("kind") or "without a kind")] += 1
            continue
        found.resources.append(parse_resource(document, f"{source}#{i}" if len(documents) > 1 else source))
    return found


def read_manifests(path: str | Path, recursive: bool = False) -> Manifests:
    """The kubedistill resources in a file, or in a folder's manifest files (see `manifest_files`)."""
    found = Manifests()
    for file in manifest_files(path, recursive):
        found.extend(parse_manifests(file.read_text(), str(file)))
    return found


def load_manifests(path: str | Path) -> list[Resource]:
    """Every kubedistill resource in a YAML file or a folder's manifest files (other kinds skipped)."""
    return read_manifests(path).resources


def load_manifest(path: str | Path, kind: type[Resource]) -> Any:
    """The one resource of `kind` in a file; an error when there is none or more than one."""
    found = [r for r in load_manifests(path) if isinstance(r, kind)]
    if len(found) != 1:
        raise ManifestError(f"{path}: expected exactly one {kind.__name__}, found {len(found)}")
    return found[0]
