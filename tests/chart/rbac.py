"""A small RBAC evaluator: which API request a set of PolicyRules allows (Kubernetes' own semantics)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit


@dataclass(frozen=True)
class Request:
    """One resource request as the RBAC authorizer sees it."""

    verb: str
    group: str
    resource: str  # plural, with "/subresource" when there is one
    namespace: str | None
    name: str | None = None

    def __str__(self) -> str:
        where = f" in {self.namespace}" if self.namespace else ""
        return f"{self.verb} {self.group or 'core'}/{self.resource}{where}"


def parse_request(method: str, url: str) -> Request | None:
    """An HTTP request → the RBAC request; None for discovery and other non-resource paths."""
    parts = urlsplit(url)
    segments = [s for s in parts.path.split("/") if s]
    query = parse_qs(parts.query)
    if segments[:1] == ["api"] and len(segments) >= 3:
        group, rest = "", segments[2:]
    elif segments[:1] == ["apis"] and len(segments) >= 4:
        group, rest = segments[1], segments[3:]
    else:
        return None  # /api, /apis, /apis/<group>/<version>, /version, /healthz: discovery, not resources
    namespace = None
    if rest[0] == "namespaces" and len(rest) >= 3:
        namespace, rest = rest[1], rest[2:]
    resource, name, subresource = rest[0], (rest[1] if len(rest) > 1 else None), (rest[2] if len(rest) > 2 else None)
    method = method.upper()
    if method == "GET":
        verb = "get" if name else ("watch" if query.get("watch", ["false"])[0] in ("true", "1") else "list")
    else:
        verb = {"POST": "create", "PUT": "update", "PATCH": "patch"}.get(method) or (
            "delete" if name else "deletecollection"
        )
    return Request(verb, group, f"{resource}/{subresource}" if subresource else resource, namespace, name)


def allows(rule: dict[str, Any], request: Request) -> bool:
    names = rule.get("resourceNames")
    return (
        request.group in rule.get("apiGroups", [])
        and request.resource in rule.get("resources", [])
        and request.verb in rule.get("verbs", [])
        and (not names or request.name in names)
    )


def grants(rules: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    """Every (group, resource, verb) the rules allow."""
    return {
        (group, resource, verb)
        for rule in rules
        for group in rule.get("apiGroups", [])
        for resource in rule.get("resources", [])
        for verb in rule.get("verbs", [])
    }
