"""Kubernetes-style conditions: built here, merged by type, transition times kept while nothing changes."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any


def now_iso() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def condition(type_: str, status: bool | None, reason: str, message: str = "",
              generation: int | None = None) -> dict[str, Any]:
    """One condition; `status` True/False, or None for Unknown. Transition time is set on merge."""
    out: dict[str, Any] = {
        "type": type_,
        "status": "Unknown" if status is None else ("True" if status else "False"),
        "reason": reason,
        "message": message,
    }
    if generation is not None:
        out["observedGeneration"] = generation
    return out


def merge_conditions(existing: list[dict[str, Any]] | None, updates: list[dict[str, Any]],
                     now: str | None = None) -> list[dict[str, Any]]:
    """Upsert `updates` by type into `existing`; lastTransitionTime moves only when the status flips."""
    now = now or now_iso()
    merged = [dict(c) for c in existing or []]
    index = {c.get("type"): i for i, c in enumerate(merged)}
    for update in updates:
        i = index.get(update["type"])
        previous = merged[i] if i is not None else None
        new = dict(update)
        if previous is not None and previous.get("status") == new["status"] and previous.get("lastTransitionTime"):
            new["lastTransitionTime"] = previous["lastTransitionTime"]
        else:
            new["lastTransitionTime"] = now
        if i is None:
            index[new["type"]] = len(merged)
            merged.append(new)
        else:
            merged[i] = new
    return merged


def same_conditions(existing: list[dict[str, Any]] | None, updates: list[dict[str, Any]]) -> bool:
    """Whether applying `updates` would change nothing (ignoring transition times)."""
    current = {c.get("type"): c for c in existing or []}
    for update in updates:
        old = current.get(update["type"])
        if old is None or any(old.get(k) != v for k, v in update.items()):
            return False
    return True


@dataclass
class StatusUpdate:
    """A change to a resource's status: plain fields (merge-patch; None deletes) and conditions by type."""

    fields: dict[str, Any] = field(default_factory=dict)
    conditions: list[dict[str, Any]] = field(default_factory=list)

    def is_noop(self, status: dict[str, Any]) -> bool:
        fields_same = all(status.get(k) == v for k, v in self.fields.items())
        return fields_same and same_conditions(status.get("conditions"), self.conditions)

    def merged_into(self, status: dict[str, Any]) -> dict[str, Any]:
        """The status patch for a read-modify-write: these fields plus the whole merged conditions list."""
        patch = dict(self.fields)
        if self.conditions:
            patch["conditions"] = merge_conditions(status.get("conditions"), self.conditions)
        return patch
