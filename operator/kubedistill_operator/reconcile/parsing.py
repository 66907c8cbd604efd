"""A resource body as the API models read it, or a permanent failure written into its status."""

from __future__ import annotations

from typing import Any, TypeVar

import kopf

from kubedistill.api import ManifestError, parse_resource
from kubedistill_operator.reconcile.context import Context, StatusWriter
from kubedistill_operator.status.conditions import StatusUpdate, condition

Resource = TypeVar("Resource")


def parse_or_refuse(ctx: Context, body: dict[str, Any], writer: StatusWriter, kind: type[Resource], *,
                    phase: str, condition_type: str) -> Resource:
    """The object as `kind`; a spec the models refuse can never work: its status gets `phase` and
    `condition_type` False with reason InvalidSpec, an Event says why, and kopf stops retrying it."""
    name = f"{kind.__name__} {body['metadata'].get('name')}"
    try:
        resource = parse_resource(plain(body), source=name)
    except ManifestError as error:
        generation = body["metadata"].get("generation")
        writer.write(StatusUpdate(fields={"phase": phase, "observedGeneration": generation},
                                  conditions=[condition(condition_type, False, "InvalidSpec", str(error), generation)]))
        ctx.event(body, "Warning", "InvalidSpec", str(error))
        raise kopf.PermanentError(str(error)) from None
    assert isinstance(resource, kind)
    return resource


def plain(body: dict[str, Any]) -> dict[str, Any]:
    """The parts of a body the models read (kopf bodies are views; status is the operator's own)."""
    return {k: _to_plain(body[k]) for k in ("apiVersion", "kind", "metadata", "spec") if k in body}


def _to_plain(value: Any) -> Any:
    if hasattr(value, "items"):
        return {k: _to_plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_to_plain(v) for v in value]
    return value
